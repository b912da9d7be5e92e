"""HRNet's default ``channels_last=None``: a CPU float32 training step runs in channels_last with hrnet_mm's CPU
training kernels and hands back maps in the input's memory format; every other forward runs the plain NCHW
layers, bit for bit those of ``channels_last=False``.

References: ``HRNet(channels_last=False)`` on the same weights (torch's layers) and its float64 gradients.
"""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
from conftest import TINY_EXTRA, grads_l2, randomize_, rel_err

from hrnet_mm.models import HRNet
from hrnet_mm.ops import fused_norm, winograd


def _pair(**kwargs):
    """(default module, channels_last=False module) with the same random weights."""
    ref = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA), channels_last=False, **kwargs))
    model = HRNet(extra=copy.deepcopy(TINY_EXTRA), **kwargs)
    model.load_state_dict(ref.state_dict())
    return model, ref


def _conv1_formats(model):
    """Records whether each call of the stem's first convolution got a channels_last map."""
    seen = []
    model.conv1.register_forward_pre_hook(lambda m, args: seen.append(winograd._is_channels_last(args[0])))
    return seen


def _step(model, x, frozen_norms=False):
    model = copy.deepcopy(model).train()
    if frozen_norms:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    return outs, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, model


def test_default_training_step_runs_channels_last_kernels_and_returns_nchw(kernel, monkeypatch):
    """The step runs channels_last, every BN layer fused and the 3x3 convolutions through Winograd (all widths,
    Winograd forced); the outputs come back contiguous NCHW, equal to the plain module's to float32 rounding, and
    the gradients as close to float64 as the plain module's are (bound of test_fused_norm.py); the weights stay
    in their own layout."""
    monkeypatch.setattr(winograd, 'TRAIN_MIN_CHANNELS', 1)
    model, ref = _pair()
    assert model.winograd and model.fused_norm and not model.channels_last
    seen = _conv1_formats(model)
    norm_calls, conv_calls = [], []
    apply, train_conv = fused_norm._apply, winograd._train_conv3x3
    monkeypatch.setattr(fused_norm, '_apply', lambda *a: norm_calls.append(1) or apply(*a))
    monkeypatch.setattr(winograd, '_train_conv3x3', lambda *a: conv_calls.append(1) or train_conv(*a))
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(6))
    with winograd.force_algorithm(4):
        outs, grads, trained = _step(model, x, frozen_norms=True)
    ref_outs, ref_grads, _ = _step(ref, x, frozen_norms=True)
    truth = _step(copy.deepcopy(ref).double(), x.double(), frozen_norms=True)[1]
    assert seen == [True]
    assert len(norm_calls) >= sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) and conv_calls
    assert all(o.is_contiguous() for o in outs)
    assert all(rel_err(a, b) < 1e-4 for a, b in zip(outs, ref_outs))
    assert grads.keys() == truth.keys()
    assert grads_l2(grads, truth) < 1e-3
    assert all(p.is_contiguous() and trained.get_parameter(n).grad.is_contiguous()
               for n, p in trained.named_parameters())


def test_default_training_step_with_batch_statistics_matches_the_plain_module(kernel):
    """Batch statistics (the default training mode): outputs, running statistics and gradients as the plain
    module's, to float32 rounding amplified through the network (test_fused_norm.py)."""
    model, ref = _pair()
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(7))
    outs, grads, trained = _step(model, x)
    ref_outs, ref_grads, ref_trained = _step(ref, x)
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(outs, ref_outs))
    for k in ref_grads:
        assert rel_err(grads[k], ref_grads[k]) < 1e-4, k
    buffers = dict(ref_trained.named_buffers())
    for k, b in trained.named_buffers():
        assert rel_err(b, buffers[k]) < 1e-5 if b.is_floating_point() else torch.equal(b, buffers[k]), k


def test_default_runs_the_plain_layers_outside_a_cpu_training_step(kernel, monkeypatch):
    """Eval mode, no gradients, float64 and autocast run NCHW through torch's layers: bit for bit the plain
    module's outputs (the peers' too: tests/test_compat.py)."""
    def fail(*args):
        raise AssertionError('a CPU training kernel ran')
    monkeypatch.setattr(fused_norm, '_apply', fail)
    monkeypatch.setattr(winograd, '_train_conv3x3', fail)
    model, ref = _pair()
    seen = _conv1_formats(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.eval()(x), ref.eval()(x)))
        model.train()(x)
    model.double()(x.double())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model.float()(x)
    assert seen == [False] * 4


def test_default_keeps_a_channels_last_input_channels_last(kernel):
    model, _ = _pair()
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    outs, _, _ = _step(model, x)
    assert all(winograd._is_channels_last(o) for o in outs)


def test_default_stays_nchw_with_norms_the_fused_kernel_does_not_take(kernel):
    """GN (torch's NHWC norms can be slower than NCHW) keeps the whole step NCHW; the check follows norm layers
    swapped after construction once train() is called, as a runner calls it."""
    model = HRNet(extra=copy.deepcopy(TINY_EXTRA), norm_cfg=dict(type='GN', num_groups=4))
    seen = _conv1_formats(model)
    _step(model, torch.randn(1, 3, 64, 64))
    bn = HRNet(extra=copy.deepcopy(TINY_EXTRA)).train()
    seen_bn = _conv1_formats(bn)
    bn(torch.randn(1, 3, 64, 64))
    bn.layer1[0].bn1 = nn.GroupNorm(4, bn.layer1[0].bn1.num_features)
    bn.train()(torch.randn(1, 3, 64, 64))
    assert seen == [False] and seen_bn == [True, False]


def test_default_fuses_the_batch_norms_a_runner_reverts_syncbn_to(kernel, monkeypatch):
    """mmengine's runner turns SyncBN into its _BatchNormXd when training is not distributed: those are fused."""
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(HRNet(extra=copy.deepcopy(TINY_EXTRA), norm_cfg=dict(type='SyncBN')))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is not nn.BatchNorm2d for m in norms)
    calls = []
    apply = fused_norm._apply
    monkeypatch.setattr(fused_norm, '_apply', lambda *a: calls.append(1) or apply(*a))
    seen = _conv1_formats(model)
    _step(model, torch.randn(1, 3, 64, 64))
    assert seen == [True] and len(calls) >= len(norms)


def test_channels_last_argument_is_checked_and_copies_recheck_the_norms(kernel):
    with pytest.raises(TypeError, match='channels_last must be None, True or False'):
        HRNet(extra=copy.deepcopy(TINY_EXTRA), channels_last='auto')
    model = HRNet(extra=copy.deepcopy(TINY_EXTRA))
    model(torch.randn(1, 3, 64, 64))
    assert model.__dict__['_norms_fusable'] is True
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert '_norms_fusable' not in clone.__dict__
    off = HRNet(extra=copy.deepcopy(TINY_EXTRA), channels_last=False)
    assert not off.winograd and not off.fused_norm and not off.auto_channels_last


def test_checkpointed_blocks_with_the_fused_norms_save_memory_and_compute_the_same():
    """``with_cp`` keeps the fused norms (their ReLU separate inside the checkpoint): six checkpointed residual
    blocks peak well below the same blocks unchecked (before the ReLU was split off, the fused kernel's saved
    outputs outlived their recomputation and the checkpointed step peaked above the unchecked one), with the same
    gradients."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
    import benchmark

    from hrnet_mm.models.blocks import BasicBlock

    def blocks(with_cp):
        torch.manual_seed(0)
        seq = nn.Sequential(*[BasicBlock(32, 32, with_cp=with_cp) for _ in range(6)]).train()
        for b in seq:
            b.fused_norm = True
        return seq

    x = torch.randn(2, 32, 64, 64).contiguous(memory_format=torch.channels_last)
    peaks, grads = {}, {}
    for with_cp in (False, True):
        seq = blocks(with_cp)
        calls = []
        fused_apply = fused_norm._apply
        fused_norm._apply = lambda *args: calls.append(1) or fused_apply(*args)
        try:
            def step():
                seq.zero_grad(set_to_none=True)
                seq(x.clone().requires_grad_()).square().mean().backward()
            step()
            peaks[with_cp] = benchmark.peak_cpu_memory_mb(step)
        finally:
            fused_norm._apply = fused_apply
        assert calls, 'the fused norms did not run'
        grads[with_cp] = [p.grad for p in seq.parameters()]
    assert peaks[True] < 0.6 * peaks[False], peaks
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(grads[True], grads[False]))
