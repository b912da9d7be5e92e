"""Quiet console logs: :func:`quiet_startup` keeps mmengine's multi-line startup records (environment, config
dump, hook order) out of the console while the runner is built; they still go to the log file of the work dir."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Iterator, List, Optional

# -------------------------------------------------------------------------------------------------- logs


def _short_path(path: str) -> str:
    """``path`` relative to the cwd when it is below it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith('..') else rel


class StartupFilter(logging.Filter):
    """Drops multi-line INFO records (environment, config dump, hook order) from a console handler while
    ``active``; the first dropped record is replaced by one line saying where the log file is."""

    max_lines = 3

    def __init__(self, handler: logging.Handler, log_file: Optional[str]) -> None:
        super().__init__()
        self.handler, self.log_file = handler, log_file
        self.active, self.dropped = True, 0

    # mmengine's own deprecation notices, raised by its checkpoint hook on every run: nothing a user can act on
    # (they stay in the log file)
    internal_notices = ('"FileClient" will be deprecated in future', '"HardDiskBackend" is the alias of')

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        if record.levelno == logging.WARNING and message.startswith(self.internal_notices):
            return False
        if not self.active or record.levelno > logging.INFO:
            return True
        if message.count('\n') < self.max_lines:
            return True
        if self.dropped == 0:
            where = f'written to {self.log_file}' if self.log_file else 'not shown'
            note = logging.LogRecord(record.name, logging.INFO, record.pathname, record.lineno,
                                     f'config, environment and hook order {where} (--verbose prints them here)',
                                     None, None)
            note.created, note.msecs = record.created, record.msecs
            self.handler.emit(note)
        self.dropped += 1
        return False


@contextlib.contextmanager
def quiet_startup(verbose: bool = False) -> Iterator[List[StartupFilter]]:
    """While the block runs (building the runner), console handlers of new ``MMLogger`` instances drop
    multi-line INFO records; the log file keeps everything. Does nothing when ``verbose``.

    Yields:
        The filters installed (inactive once the block ends).
    """
    filters: List[StartupFilter] = []
    if verbose:
        yield filters
        return
    from mmengine.logging import MMLogger

    original: Callable = MMLogger.__init__

    def __init__(self: Any, name: str, *args: Any, **kwargs: Any) -> None:
        original(self, name, *args, **kwargs)
        files = [h.baseFilename for h in self.handlers if isinstance(h, logging.FileHandler)]
        log_file = _short_path(files[0]) if files else None
        for handler in self.handlers:
            if type(handler) is logging.StreamHandler:  # the console, not a file handler
                filters.append(StartupFilter(handler, log_file))
                handler.addFilter(filters[-1])

    MMLogger.__init__ = __init__
    try:
        yield filters
    finally:
        MMLogger.__init__ = original
        for f in filters:
            f.active = False
