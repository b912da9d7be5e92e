"""Winograd 3x3 convolutions of the CPU deploy mode (hrnet_mm/ops/winograd.py, hrnet_mm/ops/csrc/winograd.cpp).

References: torch's own convolution in float64. Tolerances: F(2x2, 3x3) is about as exact as a direct float32
convolution (1e-6 of the output's largest value); F(4x4, 3x3) multiplies rounding errors by its larger transform
coefficients (up to 8 and 1/24), measured at 2e-6 to 1.1e-5 on HRNet's layer shapes, so 3e-5.
"""
from __future__ import annotations

import copy
import os
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TINY_EXTRA, randomize_, rel_err, vm_flags

from hrnet_mm.deploy import OneDNNConv2d, to_deploy
from hrnet_mm.models import HRNet
from hrnet_mm.ops import extension, hugepages, winograd

TOL = {2: 2e-6, 4: 3e-5}
# bfloat16 (bf16.cpp), largest error over the largest output against float64 of the same bfloat16 operands: a direct
# bfloat16 convolution's is its output rounding, 2.4-2.9e-3 here; F(2x2) rounds the transformed operands too,
# measured 2.7-3.4e-3; F(4x4), whose output transform multiplies those roundings by up to 8, 1.6-2.5e-2
BF16_TOL = {2: 6e-3, 4: 5e-2}


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def _reference(x, w, b, residual=None, relu=False):
    y = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    if residual is not None:
        y = y + residual.double()
    return y.relu() if relu else y


@pytest.mark.parametrize('tile', winograd.TILES)
@pytest.mark.parametrize('shape', [(2, 5, 7, 9, 12), (1, 3, 1, 2, 8), (1, 24, 13, 6, 40)])
def test_reference_algorithm_equals_torch_convolution(tile, shape):
    """The transform matrices themselves, in float64 (no kernel involved)."""
    n, c, h, w, k = shape
    g = torch.Generator().manual_seed(0)
    x, wt, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((n, c, h, w), (k, c, 3, 3), (k,)))
    assert rel_err(winograd.reference_conv(x, wt, b, tile), _reference(x, wt, b)) < 1e-12


@pytest.mark.parametrize('tile', winograd.TILES)
@pytest.mark.parametrize('shape', [
    (2, 5, 7, 9, 12),     # channels not multiples of 8, odd sizes, batch 2
    (1, 16, 1, 1, 8),     # a map smaller than one tile
    (1, 24, 13, 6, 40),   # output channels: two 16-wide panels and one 8-wide
    (1, 32, 64, 48, 32),  # many tiles: several cache blocks
    (1, 128, 8, 6, 136),  # few tiles: one block, output channels split across threads
])
@pytest.mark.parametrize('bias,residual,relu', [(True, False, False), (False, False, True), (True, True, True)])
def test_kernel_equals_convolution(kernel, tile, shape, bias, residual, relu):
    n, c, h, w, k = shape
    g = torch.Generator().manual_seed(1)
    x = _cl(torch.randn(n, c, h, w, generator=g))
    wt = torch.randn(k, c, 3, 3, generator=g) / (3 * c ** 0.5)
    b = torch.randn(k, generator=g) if bias else None
    r = _cl(torch.randn(n, k, h, w, generator=g)) if residual else None
    out = winograd.conv(x, winograd.prepare_weight(wt, tile), k, b, tile, r, relu)
    assert out.shape == (n, k, h, w) and out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, _reference(x, wt, b, r, relu)) < TOL[tile]


@pytest.mark.parametrize('tile', winograd.TILES)
def test_inplace_writes_into_the_residual(kernel, tile):
    x, wt, b = _cl(torch.randn(1, 8, 10, 11)), torch.randn(16, 8, 3, 3) / 8, torch.randn(16)
    r = _cl(torch.randn(1, 16, 10, 11))
    ref = _reference(x, wt, b, r, relu=True)
    out = winograd.conv(x, winograd.prepare_weight(wt, tile), 16, b, tile, r, relu=True, inplace=True)
    assert out.data_ptr() == r.data_ptr()
    assert rel_err(r, ref) < TOL[tile]


def test_result_does_not_depend_on_the_thread_count(kernel):
    """Blocks and channel slices change with the threads; every output sums its products in the same order."""
    x, wt = _cl(torch.randn(1, 64, 20, 24)), torch.randn(72, 64, 3, 3)
    u = winograd.prepare_weight(wt, 4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = winograd.conv(x, u, 72, None, 4)
        torch.set_num_threads(max(2, threads))
        many = winograd.conv(x, u, 72, None, 4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_pack_weight_layout():
    u = torch.arange(2 * 3 * 40, dtype=torch.float32).reshape(2, 3, 40)
    packed = winograd.pack_weight(u)
    assert packed.shape == (2, 3, 40)
    flat = packed.reshape(2, -1)
    assert torch.equal(flat[:, :48].reshape(2, 3, 16), u[:, :, :16])  # first panel: C x 16
    assert torch.equal(flat[:, 96:].reshape(2, 3, 8), u[:, :, 32:])  # last panel: C x 8
    assert winograd.pack_weight(u[:, :, :18]).shape == (2, 3, 24)  # zero columns up to a multiple of 8


def test_bf16_pack_weight_layout():
    """bfloat16 panels hold pairs of rows: value (c, k) of the panel at column j sits at (c // 2, k - j, c % 2)."""
    u = torch.arange(2 * 4 * 24, dtype=torch.float32).reshape(2, 4, 24)
    packed = winograd.pack_weight(u, torch.bfloat16)
    assert packed.shape == (2, 4, 24) and packed.dtype == torch.bfloat16
    flat = packed.reshape(2, -1).float()
    assert torch.equal(flat[:, :64].reshape(2, 2, 16, 2), u[:, :, :16].reshape(2, 2, 2, 16).transpose(2, 3))
    assert torch.equal(flat[:, 64:].reshape(2, 2, 8, 2), u[:, :, 16:].reshape(2, 2, 2, 8).transpose(2, 3))
    with pytest.raises(ValueError, match='even number of input channels'):
        winograd.pack_weight(u[:, :3], torch.bfloat16)


@pytest.fixture
def bf16_kernel(kernel):
    if not winograd.bf16_available():
        pytest.skip('the bfloat16 Winograd kernel needs an AVX-512 build on a processor with AVX512_BF16')


@pytest.mark.parametrize('tile', winograd.TILES)
@pytest.mark.parametrize('shape', [
    (2, 6, 7, 9, 12),     # channels not multiples of 16, odd sizes, batch 2
    (1, 16, 1, 1, 8),     # a map smaller than one tile, one 8-wide panel
    (1, 18, 32, 24, 18),  # HRNet-W18's widths: a 16-wide and an 8-wide panel, 2 channels in a last lane group
    (1, 32, 64, 48, 32),  # many tiles: several cache blocks
    (1, 128, 8, 6, 136),  # few tiles: one block, output channels split across threads
])
@pytest.mark.parametrize('bias,residual,relu', [(True, False, False), (True, True, True)])
def test_bf16_kernel_equals_convolution(bf16_kernel, tile, shape, bias, residual, relu):
    n, c, h, w, k = shape
    g = torch.Generator().manual_seed(1)
    x = _cl(torch.randn(n, c, h, w, generator=g).relu().bfloat16())
    wt = (torch.randn(k, c, 3, 3, generator=g) / (3 * c ** 0.5)).bfloat16()
    b = torch.randn(k, generator=g) if bias else None
    r = _cl(torch.randn(n, k, h, w, generator=g).bfloat16()) if residual else None
    out = winograd.conv(x, winograd.prepare_weight(wt, tile, torch.bfloat16), k, b, tile, r, relu)
    assert out.dtype == torch.bfloat16 and out.shape == (n, k, h, w)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out.float(), _reference(x, wt, b, r, relu)) < BF16_TOL[tile]
    if residual:  # a bfloat16 bias is its float32 value; in place gives the same values
        u = winograd.prepare_weight(wt, tile, torch.bfloat16)
        r2 = r.clone(memory_format=torch.channels_last)
        out2 = winograd.conv(x, u, k, b.bfloat16(), tile, r2, relu, inplace=True)
        assert out2.data_ptr() == r2.data_ptr()
        assert torch.equal(out2, winograd.conv(x, u, k, b.bfloat16().float(), tile, r, relu))


def test_bf16_kernel_refuses_what_it_cannot_run(bf16_kernel):
    x, wt = _cl(torch.randn(1, 8, 6, 6).bfloat16()), torch.randn(16, 8, 3, 3)
    with pytest.raises(RuntimeError, match='transformed weight must be a contiguous BFloat16'):
        winograd.conv(x, winograd.prepare_weight(wt, 2), 16, None, 2)
    with pytest.raises(RuntimeError, match='residual'):
        winograd.conv(x, winograd.prepare_weight(wt, 2, torch.bfloat16), 16, None, 2, residual=_cl(
            torch.randn(1, 16, 6, 6)))
    odd = _cl(torch.randn(1, 7, 6, 6).bfloat16())
    with pytest.raises(RuntimeError, match='even number of input channels'):
        winograd.conv(odd, winograd.prepare_weight(torch.randn(16, 8, 3, 3), 2, torch.bfloat16)[:, :7].contiguous(),
                      16, None, 2)


def test_bad_inputs_name_the_problem(kernel):
    x, wt = _cl(torch.randn(1, 8, 6, 6)), torch.randn(16, 8, 3, 3)
    u = winograd.prepare_weight(wt, 4)
    with pytest.raises(RuntimeError, match='channels_last'):
        winograd.conv(x.contiguous(), u, 16, None, 4)
    with pytest.raises(RuntimeError, match='float32'):
        winograd.conv(x.double(), u, 16, None, 4)
    with pytest.raises(RuntimeError, match='transformed weight'):
        winograd.conv(x, winograd.prepare_weight(wt, 2), 16, None, 4)
    with pytest.raises(RuntimeError, match='tile must be 2 or 4'):
        winograd.conv(x, u, 16, None, 3)
    with pytest.raises(RuntimeError, match='bias'):
        winograd.conv(x, u, 16, torch.zeros(15), 4)
    with pytest.raises(RuntimeError, match='residual'):
        winograd.conv(x, u, 16, None, 4, residual=_cl(torch.randn(1, 16, 6, 5)))
    with pytest.raises(ValueError, match=r'\(K, C, 3, 3\)'):
        winograd.transform_weight(torch.randn(16, 8, 1, 1), 4)
    with pytest.raises(ValueError, match='tile'):
        winograd.transform_weight(wt, 6)


@pytest.mark.parametrize('tile', winograd.TILES)
@pytest.mark.parametrize('add,inplace', [(False, False), (True, False), (True, True)])
def test_fused_conv_module_uses_the_forced_tile(kernel, tile, add, inplace):
    conv = randomize_(nn.Conv2d(8, 16, 3, padding=1))
    fused = OneDNNConv2d(conv, relu=True, add=add, inplace=inplace, winograd=True)
    x = _cl(torch.randn(2, 8, 13, 10))
    with torch.no_grad(), winograd.force_algorithm(tile):
        y = conv(x)
        other = _cl(torch.randn_like(y)) if add else None
        ref = (y + other if add else y).relu()
        out = fused(x, other.clone(memory_format=torch.channels_last)) if add else fused(x)
    assert fused._winograd[x.shape, x.dtype] == tile and set(fused._winograd_u) == {(tile, x.dtype)}
    assert rel_err(out, ref) < 10 * TOL[tile]
    with torch.no_grad():  # an NCHW input takes oneDNN's path, same function
        out2 = fused(x.contiguous(), other.contiguous() if add else None) if add else fused(x.contiguous())
    assert rel_err(out2, ref) < 1e-5
    x3 = _cl(torch.randn(1, 8, 9, 7))  # another input shape: chosen again, the transformed weight is shared
    with torch.no_grad(), winograd.force_algorithm(tile):
        out3 = fused(x3, _cl(torch.randn(1, 16, 9, 7))) if add else fused(x3)
    assert out3.shape == (1, 16, 9, 7) and len(fused._winograd) == 2 and len(fused._winograd_u) == 1
    assert not copy.deepcopy(fused)._winograd_u  # a copy transforms again


def test_fused_conv_with_a_wrong_input_raises_torchs_error():
    fused = OneDNNConv2d(nn.Conv2d(8, 16, 3, padding=1), winograd=True)
    with torch.no_grad(), pytest.raises(RuntimeError, match='channels'):
        fused(_cl(torch.randn(1, 5, 8, 8)))


def test_only_3x3_stride_1_convolutions_are_eligible():
    for kwargs, eligible in ((dict(kernel_size=3, padding=1), True), (dict(kernel_size=3, padding=1, stride=2), False),
                             (dict(kernel_size=1), False), (dict(kernel_size=3, padding=2, dilation=2), False),
                             (dict(kernel_size=3, padding=1, groups=2), False)):
        assert OneDNNConv2d(nn.Conv2d(8, 8, **kwargs), winograd=True).winograd is eligible


def test_fastest_takes_turns_and_keeps_each_candidates_best_time():
    order = []

    def candidate(key, seconds):
        def fn():
            order.append(key)
            time.sleep(seconds)
        return fn

    data, evict = torch.ones(4), torch.empty(4)
    assert winograd._fastest({0: candidate(0, 0.004), 2: candidate(2, 0.0), 4: candidate(4, 0.002)}, data, evict,
                             rounds=3) == 2
    assert order == [0, 2, 4] * 4  # a first call each, then 3 rounds in turn


def test_choose_algorithm_times_once_per_shape(kernel, monkeypatch):
    calls = []
    x, wt = _cl(torch.randn(1, 8, 12, 12)), torch.randn(8, 8, 3, 3)

    def onednn(data):
        calls.append(data.shape)
        return F.conv2d(data, wt, padding=1)

    monkeypatch.setattr(winograd, '_CHOICES', {})
    first = winograd.choose_algorithm(x, wt, onednn)
    assert first in (winograd.ONEDNN, *winograd.TILES)
    n = len(calls)
    assert n > 0 and winograd.choose_algorithm(x, wt, onednn) == first and len(calls) == n
    assert winograd.choices() == {(1, 8, 12, 12, 8, torch.get_num_threads()): first}
    with pytest.raises(ValueError, match='algorithm'):
        with winograd.force_algorithm(3):
            pass


def test_flush_cache_keeps_the_values(kernel):
    t = torch.randn(1000)
    copy = t.clone()
    assert winograd.flush_cache(t) is (os.uname().machine in ('x86_64', 'aarch64'))
    assert torch.equal(t, copy)


@pytest.mark.parametrize('given', [True, False])
def test_choose_algorithm_flushes_each_candidates_weight_or_empties_the_caches(kernel, monkeypatch, given):
    """With oneDNN's weight memory given, each candidate's own weight leaves the caches before its timed call (the
    Winograd weights in huge pages, as in a deploy model); without it, a buffer twice the caches' size is written
    before every call instead."""
    seen = {}
    real = winograd._fastest

    def spy(candidates, data, evict, rounds=5, flush=None):
        seen.update(keys=set(candidates), evict=evict, flush=flush)
        return real(candidates, data, evict, rounds, flush)

    monkeypatch.setattr(winograd, '_fastest', spy)
    monkeypatch.setattr(winograd, '_CHOICES', {})
    x, wt = _cl(torch.randn(1, 8, 12, 12)), torch.randn(8, 8, 3, 3)
    weight_memory = (wt.data_ptr(), wt.numel() * 4) if given else None
    winograd.choose_algorithm(x, wt, lambda data: F.conv2d(data, wt, padding=1), weight_memory)
    assert seen['keys'] == {winograd.ONEDNN, *winograd.TILES}
    if given:
        assert seen['evict'] is None and set(seen['flush']) == seen['keys']
    else:
        assert seen['flush'] is None and seen['evict'].numel() * 4 == 2 * winograd._cache_bytes()


@pytest.mark.skipif(not hugepages.available(), reason='transparent huge pages are off here')
def test_deploy_winograd_weights_are_in_huge_page_memory(kernel):
    conv = OneDNNConv2d(nn.Conv2d(16, 16, 3, padding=1), winograd=True).eval()
    with winograd.force_algorithm(4), torch.no_grad():
        conv(_cl(torch.randn(1, 16, 20, 20)))
    (u,) = conv._winograd_u.values()
    assert 'hg' in vm_flags(u.data_ptr())


@pytest.mark.parametrize('tile', winograd.TILES)
def test_deploy_with_winograd_equals_training_ready_model(kernel, tile):
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    x = _cl(torch.randn(2, 3, 97, 66))
    with torch.no_grad(), winograd.force_algorithm(tile):
        d = to_deploy(m, winograd=True)
        out = d(x)
        ref = m(x)
    convs = [c for c in d.modules() if isinstance(c, OneDNNConv2d)]
    assert any(c.winograd and set(c._winograd.values()) == {tile} for c in convs)
    for a, b in zip(out, ref):
        assert rel_err(a, b) < 1e-4


def test_deploy_winograd_on_real_widths(kernel):
    """W18 (real channel counts 18/36/72/144, not multiples of 16) with F(4x4) everywhere: within the deploy
    tolerance of 1e-4 of the training-ready model."""
    m = randomize_(HRNet(arch='w18')).eval()
    x = _cl(torch.randn(1, 3, 128, 96))
    with torch.no_grad(), winograd.force_algorithm(4):
        out = to_deploy(m, winograd=True)(x)
        ref = m(x)
    for a, b in zip(out, ref):
        assert rel_err(a, b) < 1e-4


def test_bf16_deploy_runs_winograd_in_bfloat16(bf16_kernel):
    """precision='bf16' lets the 3x3 stride-1 convolutions run either tile in bfloat16, and the model hands float32
    back. On this random 8-64-channel network the oneDNN-only bfloat16 model is 1.3-1.5e-2 (largest difference over
    largest output) from the float32 module; with every eligible layer forced to F(2x2) 1.6-1.7e-2 (within 3e-2, as
    the oneDNN-only model's test), to F(4x4) 3.8-4.4e-2 (within 6e-2; on HRNet-W32 the tiles that timing picks move
    1.5e-2 to 1.8e-2, and the demo models' task metrics by at most 0.12 points)."""
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = m(x)
        for forced, expected in ((2, {2}), (4, {4})):
            with winograd.force_algorithm(forced):
                d = to_deploy(m, precision='bf16')
                out = d(x)
            convs = [c for c in d.modules() if isinstance(c, OneDNNConv2d)]
            assert {t for c in convs for t in c._winograd.values()} == expected
            assert {u.dtype for c in convs for u in c._winograd_u.values()} <= {torch.bfloat16}
            for a, b in zip(out, ref):
                assert a.dtype == torch.float32 and rel_err(a, b) < {2: 3e-2, 4: 6e-2}[forced]


def test_deploy_without_winograd(monkeypatch):
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    d = to_deploy(m, winograd=False)
    assert not any(c.winograd for c in d.modules() if isinstance(c, OneDNNConv2d))
    with torch.no_grad(), winograd.force_algorithm(4):  # chosen while enabled ...
        chosen = to_deploy(m)
        chosen(_cl(torch.randn(1, 3, 64, 64)))
    monkeypatch.setenv('HRNET_MM_WINOGRAD', '0')
    assert not winograd.available() and 'HRNET_MM_WINOGRAD' in winograd.build_error()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # ... keeps running after the variable turns it off for new models
        for a, b in zip(chosen(_cl(x)), m(x)):
            assert rel_err(a, b) < 1e-4
    d = to_deploy(m)
    assert not any(c.winograd for c in d.modules() if isinstance(c, OneDNNConv2d))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(d(_cl(x)), m(x)):
            assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize('capability,asked,isa,flag', [
    ('AVX512', '', 'avx512', '-mavx512f'), ('AVX512', 'avx2', 'avx2', '-mavx2'), ('AVX512', 'generic', 'generic', None),
    ('AVX2', '', 'avx2', '-mavx2'), ('AVX2', 'avx512', 'avx2', '-mavx2'), ('DEFAULT', '', 'generic', None),
    ('AVX512', 'sse', 'avx512', '-mavx512f')])
def test_build_targets_the_widest_instruction_set_unless_told_narrower(monkeypatch, capability, asked, isa, flag):
    """The widest set torch reports; HRNET_MM_CPU_ISA may only narrow it (a wider or unknown name is ignored)."""
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: capability)
    monkeypatch.setenv('HRNET_MM_CPU_ISA', asked)
    name, flags = winograd._build_flags()
    assert name.startswith(f'hrnet_mm_cpu_kernels_{isa}_')
    assert (flag in flags) if flag else not any(f.startswith('-mavx') for f in flags)


def test_build_runs_the_pinned_ninja_whatever_path_holds(tmp_path, monkeypatch):
    """Another ninja first on PATH (a system one) does not build: ninja 1.11 and 1.13 log commands differently
    and each rebuilds from scratch what the other built."""
    ninja = pytest.importorskip('ninja')
    other = tmp_path / 'ninja'
    other.write_text('#!/bin/sh\necho 1.11.1\n')
    other.chmod(0o755)
    monkeypatch.setenv('PATH', str(tmp_path) + os.pathsep + os.environ.get('PATH', ''))
    assert extension.ninja_directory() == ninja.BIN_DIR


def test_build_is_shared_by_checkouts_and_named_after_isa_and_source(tmp_path, monkeypatch):
    name = winograd.build_name()
    assert name.startswith(tuple(f'hrnet_mm_cpu_kernels_{isa}_' for isa in winograd.ISAS))
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    directory = winograd.build_directory()
    assert directory.startswith(str(tmp_path)) and directory.endswith(name)
    assert torch.__version__.split('+')[0] in directory
    with monkeypatch.context() as m:  # another environment's torch: its own build (its commands name its paths)
        m.setattr(torch, '__file__', str(tmp_path / 'other-venv' / 'torch' / '__init__.py'))
        other = winograd.build_directory()
    assert other != directory and os.path.basename(other) == name
    copies = winograd._stable_sources(directory)
    assert [os.path.basename(c) for c in copies] == [os.path.basename(s) for s in winograd._SOURCES]
    assert 'norm.cpp' in [os.path.basename(c) for c in copies]
    for copy_path, source in zip(copies, winograd._SOURCES):
        assert open(copy_path).read() == open(source).read()
    for header in winograd._HEADERS:  # beside the sources, for their #include "..."
        assert open(os.path.join(directory, os.path.basename(header))).read() == open(header).read()
    norm = winograd._SOURCES.index(next(s for s in winograd._SOURCES if s.endswith('norm.cpp')))
    copy_path = copies[norm]
    mtime = os.stat(copy_path).st_mtime_ns
    assert winograd._stable_sources(directory) == copies  # unchanged sources: the copies are not rewritten
    assert os.stat(copy_path).st_mtime_ns == mtime
    other = tmp_path / 'norm.cpp'
    other.write_text('// another kernel\n')
    sources = list(winograd._SOURCES)
    sources[norm] = str(other)
    monkeypatch.setattr(winograd, '_SOURCES', tuple(sources))
    assert winograd.build_name() != name  # a changed source never loads the old build
    winograd._stable_sources(directory)
    assert open(copy_path).read() == '// another kernel\n'
