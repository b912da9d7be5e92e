"""Tensors in transparent huge pages (hrnet_mm/ops/hugepages.py): the deploy models' Winograd weights.

Reference: the kernel's own account of each mapping in /proc/self/smaps (VmFlags ``hg``: advised for huge pages).
"""
from __future__ import annotations

import gc

import pytest
import torch
from conftest import vm_flags

from hrnet_mm.ops import hugepages

needs_thp = pytest.mark.skipif(not hugepages.available(), reason='transparent huge pages are off here')


@needs_thp
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.int8])
def test_copies_are_equal_aligned_apart_and_advised_for_huge_pages(dtype):
    arena = hugepages.Arena(chunk_bytes=4 << 20)
    sources = [(torch.randn(3, 50, 7) * 20).to(dtype), (torch.randn(1000) * 20).to(dtype), torch.ones(1, dtype=dtype)]
    copies = [arena.copy(t) for t in sources]
    spans = []
    for source, copy in zip(sources, copies):
        assert torch.equal(copy, source) and copy.is_contiguous() and copy.dtype == dtype
        assert copy.data_ptr() % hugepages.ALIGN == 0
        assert 'hg' in vm_flags(copy.data_ptr())
        spans.append((copy.data_ptr(), copy.data_ptr() + copy.numel() * copy.element_size()))
    spans.sort()
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))  # no two share a byte


@needs_thp
def test_a_tensor_keeps_its_mapping_and_a_large_one_gets_its_own():
    arena = hugepages.Arena(chunk_bytes=2 << 20)
    small, large = torch.randn(100), torch.randn(3 << 20)  # 12 MiB: more than a chunk
    a, b, c = arena.copy(small), arena.copy(large), arena.copy(small)
    del arena
    gc.collect()
    assert torch.equal(a, small) and torch.equal(b, large) and torch.equal(c, small)
    assert b.data_ptr() % hugepages.HUGE_PAGE == 0  # a mapping of its own starts on a huge page


def test_without_huge_pages_copies_are_ordinary_tensors(monkeypatch):
    monkeypatch.setattr(hugepages, 'available', lambda: False)
    source = torch.randn(4, 5)
    copy = hugepages.Arena().copy(source)
    assert torch.equal(copy, source) and copy.data_ptr() != source.data_ptr()
    assert hugepages.Arena().empty((0, 3), torch.float32).shape == (0, 3)
