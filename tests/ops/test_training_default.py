"""HRNet's default ``cpu_kernels=True``: a CPU float32 training step runs in channels_last with hrnet_mm's CPU
training kernels and hands back maps in the input's memory format; every other forward runs the plain NCHW
layers, bit for bit those of ``cpu_kernels=False``. The conversion keeps parameters and keys, and
``revert_cpu_kernels`` undoes it.

References: ``HRNet(cpu_kernels=False)`` on the same weights (torch's layers) and its float64 gradients.
"""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
from conftest import TINY_EXTRA, grads_l2, kernel_nodes, randomize_, rel_err

from hrnet_mm.models import HRNet
from hrnet_mm.ops import convert_cpu_kernels, revert_cpu_kernels, uses_cpu_kernels, winograd


def _pair(**kwargs):
    """(default module, cpu_kernels=False module) with the same random weights."""
    ref = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA), cpu_kernels=False, **kwargs))
    model = HRNet(extra=copy.deepcopy(TINY_EXTRA), **kwargs)
    model.load_state_dict(ref.state_dict())
    return model, ref


def _conv1_formats(model):
    """Records whether each call of the stem's first convolution got a channels_last map."""
    seen = []
    model.conv1.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    return seen


def _step(model, x, frozen_norms=False):
    model = copy.deepcopy(model).train()
    if frozen_norms:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    outs = model(x)
    nodes = kernel_nodes(outs)
    sum(o.square().mean() for o in outs).backward()
    return outs, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, model, nodes


def test_conversion_keeps_parameters_and_keys_and_reverts():
    model, ref = _pair()
    assert uses_cpu_kernels(model) and not uses_cpu_kernels(ref)
    assert isinstance(model, HRNet) and type(ref) is HRNet
    assert list(model.state_dict()) == list(ref.state_dict())
    params = [id(p) for p in model.parameters()]
    assert revert_cpu_kernels(model) is model and not uses_cpu_kernels(model)
    assert all(type(m).__module__.startswith(('hrnet_mm.models', 'torch', 'mmcv', 'mmengine'))
               for m in model.modules())
    assert convert_cpu_kernels(model) is model and uses_cpu_kernels(model)
    assert [id(p) for p in model.parameters()] == params  # an optimizer built before keeps its parameters
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert uses_cpu_kernels(clone) and list(clone.state_dict()) == list(ref.state_dict())


def test_default_training_step_runs_channels_last_kernels_and_returns_nchw(kernel, monkeypatch):
    """The step runs channels_last, every BN layer fused and the 3x3 convolutions through Winograd (all widths,
    Winograd forced); the outputs come back contiguous NCHW, equal to the plain module's to float32 rounding, and
    the gradients as close to float64 as the plain module's are (bound of test_fused_norm.py); the weights stay
    in their own layout."""
    monkeypatch.setattr(winograd, 'TRAIN_MIN_CHANNELS', 1)
    model, ref = _pair()
    seen = _conv1_formats(model)
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(6))
    with winograd.force_algorithm(4):
        outs, grads, trained, nodes = _step(model, x, frozen_norms=True)
    ref_outs, ref_grads, _, ref_nodes = _step(ref, x, frozen_norms=True)
    truth = _step(copy.deepcopy(ref).double(), x.double(), frozen_norms=True)[1]
    assert seen == [True]
    assert nodes['norm'] >= sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) and nodes['winograd']
    assert ref_nodes == dict(winograd=0, norm=0)
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
    outs, grads, trained, _ = _step(model, x)
    ref_outs, ref_grads, ref_trained, _ = _step(ref, x)
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(outs, ref_outs))
    for k in ref_grads:
        assert rel_err(grads[k], ref_grads[k]) < 1e-4, k
    buffers = dict(ref_trained.named_buffers())
    for k, b in trained.named_buffers():
        assert rel_err(b, buffers[k]) < 1e-5 if b.is_floating_point() else torch.equal(b, buffers[k]), k


def test_default_runs_the_plain_layers_outside_a_cpu_training_step(kernel):
    """Eval mode, no gradients, float64 and autocast run NCHW through torch's layers: bit for bit the plain
    module's outputs (the peers' too: tests/project/test_compat.py), no kernel in the graph."""
    model, ref = _pair()
    seen = _conv1_formats(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.eval()(x), ref.eval()(x)))
        model.train()(x)
    assert kernel_nodes(model.eval()(x.clone().requires_grad_())) == dict(winograd=0, norm=0)
    assert kernel_nodes(model.train().double()(x.double())) == dict(winograd=0, norm=0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert kernel_nodes(model.float()(x)) == dict(winograd=0, norm=0)
    assert seen == [False] * 5


def test_default_keeps_a_channels_last_input_channels_last(kernel):
    model, _ = _pair()
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    outs = _step(model, x)[0]
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in outs)


def test_default_stays_nchw_with_norms_the_fused_kernel_does_not_take(kernel):
    """GN (torch's NHWC norms can be slower than NCHW) keeps the whole step NCHW; the check follows norm layers
    swapped after construction once train() is called, as a runner calls it, and copies check again."""
    model = HRNet(extra=copy.deepcopy(TINY_EXTRA), norm_cfg=dict(type='GN', num_groups=4))
    seen = _conv1_formats(model)
    _step(model, torch.randn(1, 3, 64, 64))
    bn = HRNet(extra=copy.deepcopy(TINY_EXTRA)).train()
    bn(torch.randn(1, 3, 64, 64))  # works out, once, that every norm is fused
    clone = copy.deepcopy(bn)
    seen_bn, seen_clone = _conv1_formats(bn), _conv1_formats(clone)
    bn(torch.randn(1, 3, 64, 64))
    gn = nn.GroupNorm(4, bn.layer1[0].bn1.num_features)
    clone.layer1[0].bn1 = gn
    clone(torch.randn(1, 3, 64, 64))
    bn.layer1[0].bn1 = gn
    bn.train()(torch.randn(1, 3, 64, 64))
    assert seen == [False] and seen_bn == [True, False] and seen_clone == [False]


def test_default_fuses_the_batch_norms_a_runner_reverts_syncbn_to(kernel):
    """mmengine's runner turns SyncBN into its _BatchNormXd when training is not distributed: those are fused."""
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(HRNet(extra=copy.deepcopy(TINY_EXTRA), norm_cfg=dict(type='SyncBN')))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is not nn.BatchNorm2d for m in norms)
    seen = _conv1_formats(model)
    nodes = _step(model, torch.randn(1, 3, 64, 64))[3]
    assert seen == [True] and nodes['norm'] >= len(norms)


def test_cpu_kernels_argument_and_the_removed_speed_switches():
    with pytest.raises(TypeError, match='cpu_kernels must be True or False'):
        HRNet(extra=copy.deepcopy(TINY_EXTRA), cpu_kernels='auto')
    for name in ('channels_last', 'compile', 'winograd', 'fused_norm'):
        with pytest.raises(TypeError, match=f"unknown arguments \\['{name}'\\]; {name}: "):
            HRNet(extra=copy.deepcopy(TINY_EXTRA), **{name: True})
    with pytest.raises(TypeError, match=r"unknown arguments \['widht'\]$"):
        HRNet(extra=copy.deepcopy(TINY_EXTRA), widht=3)


def test_checkpointed_blocks_with_the_fused_norms_save_memory_and_compute_the_same(kernel):
    """``with_cp`` keeps the fused norms (their ReLU separate inside the checkpoint): six checkpointed residual
    blocks peak well below the same blocks unchecked (with the ReLU inside the kernel, its saved outputs outlived
    their recomputation and the checkpointed step peaked above the unchecked one), with the same gradients."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'tools'))
    import benchmark

    from hrnet_mm.models.blocks import BasicBlock

    def blocks(with_cp):
        torch.manual_seed(0)
        return convert_cpu_kernels(nn.Sequential(*[BasicBlock(32, 32, with_cp=with_cp) for _ in range(6)])).train()

    x = torch.randn(2, 32, 64, 64).contiguous(memory_format=torch.channels_last)
    peaks, grads = {}, {}
    for with_cp in (False, True):
        seq = blocks(with_cp)
        if not with_cp:
            assert kernel_nodes([seq(x.clone().requires_grad_())])['norm'] == 12

        def step():
            seq.zero_grad(set_to_none=True)
            seq(x.clone().requires_grad_()).square().mean().backward()
        step()
        peaks[with_cp] = benchmark.peak_cpu_memory_mb(step)
        grads[with_cp] = [p.grad for p in seq.parameters()]
    assert peaks[True] < 0.6 * peaks[False], peaks
    assert all(rel_err(a, b) < 1e-5 for a, b in zip(grads[True], grads[False]))
