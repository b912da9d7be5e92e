"""Batch norm + residual + ReLU in one kernel for CPU channels_last training steps (hrnet_mm.ops.fused_norm,
hrnet_mm/ops/csrc/norm.cpp, HRNet(cpu_kernels=True)).

The reference is torch.nn.BatchNorm2d followed by ``+`` and ReLU on the same data, in float64: the kernel sums in
double and in another order than torch's float32 kernels, so it agrees with both to float32 rounding, not bit for
bit. 1e-5 relative (max error over the tensor's largest value) covers that with a wide margin (measured 1e-7 ..
2e-6 against torch's float32 kernels on HRNet's shapes).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TINY_EXTRA, grads_l2, kernel_nodes, randomize_, rel_err

from hrnet_mm.models import HRNet
from hrnet_mm.models.blocks import _ResidualBlock
from hrnet_mm.ops import fused_norm, winograd
from hrnet_mm.ops.fused_norm import norm_act

TOL = 1e-5


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def _bn_pair(c, seed, **kwargs):
    ref = nn.BatchNorm2d(c, **kwargs)
    g = torch.Generator().manual_seed(seed)
    if ref.affine:
        ref.weight.data = torch.rand(c, generator=g) + 0.5
        ref.bias.data = torch.randn(c, generator=g)
    if ref.track_running_stats:
        ref.running_mean.normal_(generator=g)
        ref.running_var.uniform_(0.5, 2.0, generator=g)
    return ref, copy.deepcopy(ref)


def _both(ref, ours, shape, residual, relu, seed=0):
    """Forward and backward through torch's layers and the fused kernel: (reference, fused) dicts of tensors."""
    g = torch.Generator().manual_seed(seed)
    x = _cl(torch.randn(shape, generator=g) * 3 + 1)
    r = _cl(torch.randn(shape, generator=g)) if residual else None
    dy = _cl(torch.randn(shape, generator=g))
    out = []
    ref.double()
    for bn, fused in ((ref, False), (ours, True)):
        dtype = torch.float32 if fused else torch.float64
        xi = x.to(dtype).requires_grad_()
        ri = r.to(dtype).requires_grad_() if r is not None else None
        if fused:
            assert fused_norm.fusable(bn, xi)
            y = norm_act(bn, xi, ri, relu)
        else:
            y = bn(xi)
            y = y + ri if ri is not None else y
            y = F.relu(y) if relu else y
        y.backward(dy.to(dtype))
        res = dict(y=y.detach(), dx=xi.grad)
        if ri is not None:
            res['dr'] = ri.grad
        if bn.affine and bn.weight.requires_grad:
            res.update(dw=bn.weight.grad, db=bn.bias.grad)
        if bn.track_running_stats:
            res.update(rm=bn.running_mean.clone(), rv=bn.running_var.clone(), n=bn.num_batches_tracked.clone())
        out.append(res)
    return out


@pytest.mark.parametrize('shape', [(2, 18, 9, 7), (2, 36, 8, 8), (1, 64, 5, 3), (3, 5, 7, 9), (2, 1, 4, 4),
                                   (1, 270, 4, 6), (8, 8, 1, 1)])
@pytest.mark.parametrize('residual, relu', [(False, False), (False, True), (True, True), (True, False)])
@pytest.mark.parametrize('training', [True, False])
def test_kernel_matches_batchnorm_add_relu(kernel, shape, residual, relu, training):
    """Outputs, every gradient, the running statistics and num_batches_tracked, in training (batch statistics)
    and eval mode (running statistics), for channel counts that are and are not multiples of 8 (including
    fewer rows than a period of lcm(8, C) floats: the partial-vector path)."""
    ref, ours = _bn_pair(shape[1], seed=shape[1])
    ref.train(training)
    ours.train(training)
    a, b = _both(ref, ours, shape, residual, relu)
    assert a.keys() == b.keys()
    for k in a:
        assert rel_err(b[k], a[k]) < TOL, k
    assert b['y'].is_contiguous(memory_format=torch.channels_last)
    assert b['dx'].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('kwargs', [dict(momentum=None), dict(affine=False), dict(track_running_stats=False),
                                    dict(momentum=0.3, eps=1e-3)])
def test_kernel_follows_the_layers_options(kernel, kwargs):
    """momentum=None (cumulative average, over several steps), no affine parameters, no running statistics
    (batch statistics in eval mode too), other momentum and eps."""
    ref, ours = _bn_pair(18, seed=1, **kwargs)
    for step in range(3):
        for bn in (ref, ours):
            if bn.affine:
                bn.weight.grad = bn.bias.grad = None
        a, b = _both(ref, ours, (2, 18, 6, 5), residual=True, relu=True, seed=step)
        for k in a:
            assert rel_err(b[k], a[k]) < TOL, (step, k)
    ref.eval()
    ours.eval()
    a, b = _both(ref, ours, (2, 18, 6, 5), residual=False, relu=True, seed=9)
    for k in a:
        assert rel_err(b[k], a[k]) < TOL, k


def test_only_the_gradients_asked_for(kernel):
    """A frozen layer (no weight gradients) and an input that needs no gradient."""
    ref, ours = _bn_pair(36, seed=2)
    for bn in (ref, ours):
        bn.requires_grad_(False)
    a, b = _both(ref, ours, (2, 36, 4, 4), residual=True, relu=True)
    assert ours.weight.grad is None and ours.bias.grad is None
    for k in a:
        assert rel_err(b[k], a[k]) < TOL, k
    x = _cl(torch.randn(2, 36, 4, 4))
    r = _cl(torch.randn(2, 36, 4, 4)).requires_grad_()
    ours.requires_grad_(True)
    norm_act(ours, x, r, relu=True).sum().backward()
    assert r.grad is not None and ours.weight.grad is not None


def test_other_inputs_and_layers_run_the_modules(kernel, monkeypatch):
    """NCHW or non-float32 maps, other norm layers, and a training batch of one value per channel (torch's own
    error) go through the modules, with their exact results."""
    def fail(*args):
        raise AssertionError('fused kernel ran')
    monkeypatch.setattr(fused_norm, '_apply', fail)
    bn = randomize_(nn.BatchNorm2d(8)).train()
    x = torch.randn(2, 8, 5, 5)
    r = torch.randn(2, 8, 5, 5)
    for layer, t in [(bn, x), (bn, x.double()), (nn.GroupNorm(2, 8), _cl(x)), (nn.SyncBatchNorm(8).eval(), _cl(x))]:
        layer = layer.to(t.dtype)
        ref = F.relu(copy.deepcopy(layer)(t) + r.to(t.dtype))
        assert torch.equal(norm_act(layer, t, r.to(t.dtype), relu=True), ref)
    with pytest.raises(ValueError, match='Expected more than 1 value per channel'):
        norm_act(bn, _cl(torch.randn(1, 8, 1, 1)), relu=True)


def test_not_fused_when_scripting_tracing_or_disabled(kernel, monkeypatch):
    bn = nn.BatchNorm2d(8)
    x = _cl(torch.randn(2, 8, 4, 4))
    assert fused_norm.fusable(bn, x)
    monkeypatch.setattr(torch.jit, 'is_tracing', lambda: True)
    assert not fused_norm.fusable(bn, x)
    monkeypatch.undo()
    monkeypatch.setenv('HRNET_MM_WINOGRAD', '0')
    assert not fused_norm.fusable(bn, x)


def _train_step(model, x, frozen_norms=False):
    model = copy.deepcopy(model).train()
    if frozen_norms:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    outs = model(x)
    nodes = kernel_nodes(outs)
    sum(o.square().mean() for o in outs).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return [o.detach() for o in outs], grads, buffers, nodes


@pytest.mark.parametrize('frozen_norms', [False, True])
@pytest.mark.parametrize('with_cp', [False, True])
def test_hrnet_training_step_with_fused_norms(kernel, frozen_norms, with_cp):
    """A whole training step with the CPU kernels and oneDNN convolutions (Winograd held off), so that only the
    norms' rounding differs from the plain module's: outputs, every parameter's gradient and every buffer (running
    statistics, num_batches_tracked) as with torch's layers, with and without checkpointing (whose recomputation
    updates the running statistics a second time, as it does torch's) and with the norms in eval mode
    (norm_eval)."""
    ref = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA), cpu_kernels=False, with_cp=with_cp))
    ours = HRNet(extra=copy.deepcopy(TINY_EXTRA), with_cp=with_cp)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(5))
    with winograd.force_algorithm(winograd.ONEDNN):
        a, b = _train_step(ref, x, frozen_norms), _train_step(ours, x, frozen_norms)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in ours.modules())
    # every BN layer ran fused; with_cp: the blocks' run inside checkpoints, out of the graph until the backward
    n_block = sum(isinstance(m, nn.BatchNorm2d) for b in ours.modules() if isinstance(b, _ResidualBlock)
                  for m in b.modules())
    assert a[3]['norm'] == 0 and b[3]['norm'] >= (n_bn - n_block if with_cp else n_bn)
    for ya, yb in zip(a[0], b[0]):
        assert rel_err(yb, ya) < TOL
    assert a[1].keys() == b[1].keys() and a[2].keys() == b[2].keys()
    for k in a[1]:
        assert rel_err(b[1][k], a[1][k]) < 1e-4, k  # gradients: rounding amplified through the network
    for k in a[2]:
        assert rel_err(b[2][k], a[2][k]) < TOL, k


def test_hrnet_default_step_against_float64(kernel):
    """The default (Winograd convolutions and fused norms) against the float64 gradients of the same weights,
    frozen norms (tools/benchmark.py check_float32_gradients), on maps large enough that no branch has fewer than
    12 positions per channel."""
    ref = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA), cpu_kernels=False))
    model = HRNet(extra=copy.deepcopy(TINY_EXTRA))
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(6))
    truth = _train_step(copy.deepcopy(ref).double(), x.double(), frozen_norms=True)[1]
    ours = _train_step(model, x, frozen_norms=True)
    assert ours[3]['norm'] and grads_l2(ours[1], truth) < 1e-3


def test_hrnet_inference_and_scripting_run_torchs_norms(kernel):
    model = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = model(x)
    assert kernel_nodes(model(x.clone().requires_grad_()))['norm'] == 0
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(scripted(x), ref))
