"""One-line user errors of the tools: :class:`UserInputError`, the messages for a config or ``_base_`` that does
not exist (with the closest shipped names), and :func:`user_errors`, which turns user errors (and exceptions that
are clearly caused by the input: missing files, broken JSON, unknown registry names) into one line
``<tool>: error: ...`` with exit status 2, or shows the traceback with ``debug``; an interrupted run gets the line
that says how to resume."""
from __future__ import annotations

import contextlib
import json
import os
import os.path as osp
import shlex
import sys
import traceback
from typing import Any, Iterator, List, Optional, Sequence, Tuple


class UserInputError(Exception):
    """A problem with the user's input (data, config, checkpoint), reported as one line."""


# ----------------------------------------------------------------------------------------------- datasets


# ------------------------------------------------------------------------------------------- configs


def shipped_configs() -> List[str]:
    """The configs hrnet_mm ships, as ``configs/<task>/<name>.py`` paths relative to the package's configs root."""
    root = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim', 'configs')
    found = []
    for dirpath, _, names in os.walk(root):
        found += [osp.relpath(osp.join(dirpath, n), root) for n in names if n.endswith('.py')]
    return sorted('configs/' + p.replace(os.sep, '/') for p in found if '_base_' not in p)


def config_not_found(path: str) -> str:
    """The error line for a config path that does not exist, with the closest shipped configs."""
    from ..zoo.weights import closest
    configs = shipped_configs()
    by_name = {osp.splitext(osp.basename(c))[0]: c for c in configs}
    stem = osp.splitext(osp.basename(path))[0]
    close = [by_name[n] for n in closest(stem, list(by_name))]
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    return f'config file not found: {path}{hint}'


def missing_base_message(error: str) -> Optional[str]:
    """For mmengine's error about a missing ``hrnet_mm::<task>/<name>.py`` base, the line that names it as written
    and the closest shipped configs; ``None`` for other errors."""
    import re
    match = re.search(r'hrnet_mm[/\\]\.mim[/\\]configs[/\\]([^"\']+)', error)
    if not match or 'does not exist' not in error:
        return None
    rel = match.group(1).replace('\\', '/')
    line = config_not_found(f'hrnet_mm::{rel}').replace('configs/', 'hrnet_mm::')
    return line.replace('config file not found', '_base_ not found', 1)


# ------------------------------------------------------------------------------------------------ errors


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    return (text.splitlines() or [''])[0]


def _built_from_config(exc: BaseException) -> Optional[str]:
    """The class that mmengine's ``build_from_cfg`` was building when ``exc`` was raised (the innermost one), or
    ``None`` when it was raised elsewhere."""
    name, tb = None, exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == 'build_from_cfg' and 'mmengine' in code.co_filename:
            local = tb.tb_frame.f_locals
            cls = local.get('obj_cls')
            name = getattr(cls, '__name__', None) or str(local.get('obj_type', name))
        tb = tb.tb_next
    return name


def user_error_message(exc: BaseException) -> Optional[str]:
    """One line for an exception that is clearly caused by the user's input, else ``None``.

    Recognised: :class:`UserInputError`, missing files (``FileNotFoundError``, ``IsADirectoryError``), broken
    JSON (``json.JSONDecodeError``), names missing from a registry (mmengine's ``KeyError('X is not in the
    ... registry')``) and a ``ValueError``/``TypeError``/``AssertionError`` raised while mmengine builds an object
    from the config (a wrong argument, such as ``model.backbone.arch=w33``); the exception's cause chain is
    searched too.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserInputError):
            return str(exc)
        if isinstance(exc, (FileNotFoundError, IsADirectoryError)):
            name = exc.filename if getattr(exc, 'filename', None) else None
            what = 'file not found' if isinstance(exc, FileNotFoundError) else 'expected a file, found a folder'
            if name is not None:
                return f'{what}: {name}; check the paths in the config (data_root, ann_file, data_prefix, load_from)'
            return f'{type(exc).__name__}: {_first_line(exc)}'
        if isinstance(exc, json.JSONDecodeError):
            return f'invalid JSON file ({exc}); check the annotation files of the config'
        if isinstance(exc, KeyError) and 'is not in the' in _first_line(exc) and 'registry' in _first_line(exc):
            line = _first_line(exc).split('. Please check')[0]
            return f'{line}: check the type names in the config and its custom_imports'
        built = _built_from_config(exc) if isinstance(exc, (ValueError, TypeError, AssertionError)) else None
        if built is not None:
            return f'cannot build {built} from the config: {_first_line(exc) or type(exc).__name__}; fix the ' \
                   'config or --cfg-options'
        exc = exc.__cause__ or exc.__context__
    return None


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt or was raised while handling one (its cause/context chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class Interrupted(Exception):
    """Ctrl-C, with the one line that tells what to do next."""


class InterruptGuard:
    """Makes one Ctrl-C stop a training run even where the ``KeyboardInterrupt`` gets lost.

    Python raises a Ctrl-C wherever the main thread happens to be. When that is inside a finalizer (``__del__``, a
    weakref callback: the exception is printed as "Exception ignored" and dropped) or inside a library's
    ``except BaseException``, training simply goes on. While the guard is active, SIGINT also sets
    :attr:`requested`, and the hook that :meth:`hook` returns raises ``KeyboardInterrupt`` again at the next
    train or val iteration and epoch end. Use it as a context manager in the main thread; it restores the
    previous SIGINT handler on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _on_sigint(self, signum, frame) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raises ``KeyboardInterrupt`` if a Ctrl-C arrived while the guard was active."""
        if self.requested:
            raise KeyboardInterrupt

    def hook(self):
        """An mmengine hook (highest priority) that calls :meth:`check` before every train and val iteration and
        after every train and val epoch; register it with ``runner.register_hook(guard.hook(), 'HIGHEST')``."""
        from mmengine.hooks import Hook

        check = self.check

        class InterruptHook(Hook):
            priority = 'HIGHEST'

            def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
                check()

            def before_val_iter(self, runner, batch_idx, data_batch=None) -> None:
                check()

            def after_train_epoch(self, runner) -> None:
                check()

            def after_val_epoch(self, runner, metrics=None) -> None:
                check()

        return InterruptHook()

    def __enter__(self) -> 'InterruptGuard':
        import signal
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info) -> None:
        import signal
        signal.signal(signal.SIGINT, self._previous)


@contextlib.contextmanager
def user_errors(prog: str, debug: bool = False, user_types: Tuple[type, ...] = ()) -> Iterator[None]:
    """Reports user errors in the block as ``prog: error: <one line>`` on stderr and exits with status 2.

    Exceptions of ``user_types`` and those :func:`user_error_message` recognises are user errors; others
    propagate with their traceback. :class:`Interrupted` prints its line and exits with status 130.

    Args:
        prog: Tool name.
        debug: Also print the traceback of user errors (``--debug``).
        user_types: Further exception types whose text is the one line (e.g. the tool's ``ToolError``).
    """
    try:
        yield
    except Interrupted as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f'{prog}: {exc}\n')
        sys.exit(130)
    except Exception as exc:
        message = str(exc) if user_types and isinstance(exc, user_types) else user_error_message(exc)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        elif not isinstance(exc, user_types + (UserInputError, )):  # raised by a library: say where to look
            message += ' (--debug shows the traceback)'
        sys.stdout.flush()
        sys.stderr.write(f'{prog}: error: {message}\n')
        sys.exit(2)


def interrupted_message(work_dir: str, command: Sequence[str]) -> str:
    """The line printed when training is interrupted: where the last checkpoint is and how to resume."""
    last = osp.join(work_dir, 'last_checkpoint')
    resume = ' '.join(shlex.quote(part) for part in [*command, *([] if '--resume' in command else ['--resume'])])
    if osp.isfile(last):
        with open(last) as f:
            ckpt = f.read().strip()
        return f'interrupted; last checkpoint: {ckpt}; continue with: {resume}'
    return f'interrupted before the first checkpoint was saved (work dir: {work_dir}); rerun to start again'
