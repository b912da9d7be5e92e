"""Tensors in transparent huge pages (2 MiB), for the weights that every deploy forward streams from memory.

A deploy model's transformed Winograd weights outgrow the processor's caches, so each forward reads every one of
them from memory once. In 4 KiB pages that is a page walk for every 4 KiB panel of the products; in 2 MiB pages
one for every 512 of them. :class:`Arena` places tensors in anonymous memory mapped with
``madvise(MADV_HUGEPAGE)``, which the kernel backs with huge pages when transparent huge pages are enabled in
``always`` or ``madvise`` mode (``/sys/kernel/mm/transparent_hugepage/enabled``). Where they are not (another
operating system, THP off), :meth:`Arena.copy` returns an ordinary copy, so callers need not check.
"""
from __future__ import annotations

import functools
import math
import mmap
from typing import Optional

import torch

HUGE_PAGE = 2 << 20
ALIGN = 64  # a cache line: every tensor starts on one
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether ``madvise(MADV_HUGEPAGE)`` gives huge pages here: Linux with transparent huge pages in ``always`` or
    ``madvise`` mode."""
    if not hasattr(mmap, 'MADV_HUGEPAGE'):
        return False
    try:
        with open(_THP_SETTING) as f:
            setting = f.read()
    except OSError:
        return False
    return '[always]' in setting or '[madvise]' in setting


class Arena:
    """Bump allocation of tensors from huge-page-advised mappings of ``chunk_bytes`` (virtual; a 2 MiB page is
    only backed once something is written to it). A mapping lives as long as any tensor in it: each tensor holds
    a reference to its buffer.

    Args:
        chunk_bytes: Size of each mapping; a larger tensor gets a mapping of its own size.
    """

    def __init__(self, chunk_bytes: int = 64 << 20) -> None:
        self.chunk_bytes = chunk_bytes
        self._buffer: Optional[mmap.mmap] = None
        self._offset = 0  # next free byte of _buffer
        self._end = 0

    def _map(self, nbytes: int) -> None:
        size = max(self.chunk_bytes, -(-nbytes // HUGE_PAGE) * HUGE_PAGE) + HUGE_PAGE  # room to align the start
        buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buffer.madvise(mmap.MADV_HUGEPAGE)
        address = torch.frombuffer(buffer, dtype=torch.uint8, count=1).data_ptr()
        self._buffer, self._offset, self._end = buffer, -address % HUGE_PAGE, size

    def empty(self, shape, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape`` and ``dtype`` in huge-page memory (an ordinary
        ``torch.empty`` where huge pages are not :func:`available`)."""
        numel = math.prod(int(size) for size in shape)
        if not available() or numel == 0:
            return torch.empty(shape, dtype=dtype)
        nbytes = numel * dtype.itemsize
        if self._buffer is None or self._offset + nbytes > self._end:
            self._map(nbytes)
        start = self._offset
        self._offset = -(-(start + nbytes) // ALIGN) * ALIGN
        flat = torch.frombuffer(self._buffer, dtype=torch.uint8, count=nbytes, offset=start)
        return flat.view(dtype).view(shape)

    def copy(self, tensor: torch.Tensor) -> torch.Tensor:
        """A contiguous copy of the CPU tensor ``tensor`` in huge-page memory (an ordinary copy where huge pages
        are not :func:`available`)."""
        out = self.empty(tensor.shape, tensor.dtype)
        return out.copy_(tensor)


_WEIGHTS = Arena()


def weight_copy(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` copied into the arena that holds the deploy models' weights (see :class:`Arena`)."""
    return _WEIGHTS.copy(tensor)
