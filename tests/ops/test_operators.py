"""hrnet_mm's CPU kernels as PyTorch operators (``torch.ops.hrnet_mm``): their schemas, autograd registration and
fake kernels pass ``torch.library.opcheck``, and ``torch.compile(fullgraph=True)`` traces a whole training step with
them in one graph that computes what eager mode computes.

References: torch's own checks of custom operators (opcheck: schema and mutation annotations against what the
kernel does, the autograd kernel, the fake kernel against the real one, AOT dispatch with dynamic shapes), and the
eager module.
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_EXTRA, randomize_
from torch.library import opcheck

from hrnet_mm.models import HRNet
from hrnet_mm.ops import winograd

OPS = ('winograd_conv3x3', 'winograd_conv3x3_add_', 'train_conv3x3', 'train_conv3x3_backward', 'batch_norm_act',
       'batch_norm_act_backward', 'upsample_add', 'upsample_add_')


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def _passed(report):
    return all(v == 'SUCCESS' for v in report.values()), report


@pytest.mark.parametrize('tile,weight_tile', [(0, 0), (2, 4), (4, 2)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_train_conv3x3_passes_opcheck(kernel, tile, weight_tile, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 7, generator=g)
    x = (_cl(x) if channels_last else x).requires_grad_()
    w = torch.randn(12, 8, 3, 3, generator=g, requires_grad=True)
    assert _passed(opcheck(torch.ops.hrnet_mm.train_conv3x3.default, (x, w, tile, weight_tile, False)))
    dy = _cl(torch.randn(2, 12, 9, 7, generator=g))
    args = (dy, _cl(x.detach()), w.detach(), tile, weight_tile, False, True, True)
    assert _passed(opcheck(torch.ops.hrnet_mm.train_conv3x3_backward.default, args))


@pytest.mark.parametrize('tile', [2, 4])
@pytest.mark.parametrize('residual,relu', [(False, False), (True, True)])
def test_deploy_winograd_conv_passes_opcheck_and_equals_conv2d(kernel, tile, residual, relu):
    """The deploy model's convolution: ``winograd_conv3x3`` returns a new tensor, ``winograd_conv3x3_add_`` writes
    into the residual it declares mutated; both equal ``relu?(conv2d + bias + residual)`` to float32 rounding."""
    g = torch.Generator().manual_seed(3)
    x, w = _cl(torch.randn(2, 8, 9, 7, generator=g)), torch.randn(12, 8, 3, 3, generator=g)
    b = torch.randn(12, generator=g)
    r = _cl(torch.randn(2, 12, 9, 7, generator=g)) if residual else None
    u = winograd.prepare_weight(w, tile)
    args = (x, u, 12, b, r, relu, tile)
    assert _passed(opcheck(torch.ops.hrnet_mm.winograd_conv3x3.default, args))
    expected = torch.nn.functional.conv2d(x, w, b, padding=1) + (r if residual else 0)
    expected = expected.relu() if relu else expected
    torch.testing.assert_close(torch.ops.hrnet_mm.winograd_conv3x3(*args), expected, rtol=1e-4, atol=1e-4)
    if residual:
        assert _passed(opcheck(torch.ops.hrnet_mm.winograd_conv3x3_add_.default, (x, u, 12, b, r.clone(), relu, tile)))
        torch.ops.hrnet_mm.winograd_conv3x3_add_(*args)
        torch.testing.assert_close(r, expected, rtol=1e-4, atol=1e-4)


def _upsample_add_reference(x, low, relu):
    out = x + torch.nn.functional.interpolate(low, size=x.shape[-2:], mode='nearest')
    return out.relu() if relu else out


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('channels,size,low_size', [
    (32, (16, 12), (8, 6)),  # x2, 16-channel steps
    (18, (33, 47), (17, 24)),  # odd sizes (torch's float index rule), 18 = 16 + a tail of 2
    (36, (17, 9), (5, 3)),  # non-integer ratios
    (7, (10, 10), (10, 10)),  # fewer channels than a step, ratio 1
    (16, (6, 10), (12, 20)),  # downsampling
])
def test_upsample_add_equals_torch_bit_for_bit(kernel, dtype, relu, channels, size, low_size):
    """``upsample_add`` (new tensor) and ``upsample_add_`` (into ``x``) against interpolate + add + ReLU in torch:
    bit for bit, as both round the float32 sum to bfloat16 the same way; non-channels_last inputs take torch's
    operators."""
    g = torch.Generator().manual_seed(5)
    x = _cl(torch.randn(2, channels, *size, generator=g).to(dtype))
    low = _cl(torch.randn(2, channels, *low_size, generator=g).to(dtype))
    expected = _upsample_add_reference(x, low, relu)
    out = torch.ops.hrnet_mm.upsample_add(x, low, relu)
    assert torch.equal(out, expected) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(torch.ops.hrnet_mm.upsample_add(x.contiguous(), low, relu), expected)
    into = x.clone()
    torch.ops.hrnet_mm.upsample_add_(into, low, relu)
    assert torch.equal(into, expected)
    assert _passed(opcheck(torch.ops.hrnet_mm.upsample_add.default, (x, low, relu)))
    assert _passed(opcheck(torch.ops.hrnet_mm.upsample_add_.default, (x.clone(), low, relu)))


@pytest.mark.parametrize('batch_stats', [True, False])
@pytest.mark.parametrize('residual,relu', [(False, False), (True, True)])
def test_batch_norm_act_passes_opcheck(kernel, batch_stats, residual, relu):
    """The running statistics are declared mutated (``Tensor(a!)``); opcheck checks the kernel mutates nothing
    else."""
    g = torch.Generator().manual_seed(1)
    x = _cl(torch.randn(2, 5, 6, 4, generator=g)).requires_grad_()
    w, b = (torch.rand(5, generator=g) + 0.5).requires_grad_(), torch.randn(5, generator=g).requires_grad_()
    r = _cl(torch.randn(2, 5, 6, 4, generator=g)).requires_grad_() if residual else None
    args = (x, w, b, r, torch.zeros(5), torch.ones(5), batch_stats, 0.1, 1e-5, relu)
    assert _passed(opcheck(torch.ops.hrnet_mm.batch_norm_act.default, args))


def test_training_step_compiles_into_one_graph_with_the_kernels(kernel, monkeypatch):
    """``torch.compile(fullgraph=True)`` of a training step with the CPU kernels on (Winograd forced on every
    width): no graph break, the operators in the graph, and the outputs, gradients and running statistics of
    eager mode bit for bit (``aot_eager`` runs the traced forward and backward graphs op by op, with the same
    kernels)."""
    monkeypatch.setattr(winograd, 'TRAIN_MIN_CHANNELS', 1)
    eager = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).train()
    model = copy.deepcopy(eager)
    seen = set()

    def backend(gm, inputs):
        seen.update(str(n.target) for n in gm.graph.nodes if n.op == 'call_function')
        from torch._dynamo.backends.debugging import aot_eager
        return aot_eager(gm, inputs)

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with winograd.force_algorithm(4):
        ref = eager(x)
        ref_grads = torch.autograd.grad(sum(o.square().mean() for o in ref), list(eager.parameters()))
        outs = compiled(x)
        grads = torch.autograd.grad(sum(o.square().mean() for o in outs), list(model.parameters()))
    assert any('train_conv3x3' in t for t in seen) and any('batch_norm_act' in t for t in seen), seen
    assert all(torch.equal(a, b) for a, b in zip(outs, ref))
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), eager.buffers()))


def test_operators_are_registered_with_the_dispatcher(kernel):
    for name in OPS:
        op = getattr(torch.ops.hrnet_mm, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), 'CPU'), name
    for name in ('train_conv3x3', 'batch_norm_act'):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f'hrnet_mm::{name}', 'Autograd'), name


@pytest.mark.slow
def test_training_step_compiles_with_inductor_around_the_kernels(kernel, monkeypatch):
    """``torch.compile(backend='inductor', fullgraph=True)`` of a training step with the CPU kernels on: inductor
    generates code for everything else and calls the operators as extern kernels (they are in its generated code);
    outputs, gradients and running statistics equal eager mode to float32 rounding (inductor may fuse and reorder
    the elementwise work around them). Compiles for about a minute on 2 cores."""
    from torch._inductor.utils import run_and_get_code
    monkeypatch.setattr(winograd, 'TRAIN_MIN_CHANNELS', 1)
    eager = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend='inductor', fullgraph=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    def step(net):
        outs = net(x)
        return outs, torch.autograd.grad(sum(o.square().mean() for o in outs), list(net.parameters()))

    with winograd.force_algorithm(4):
        ref, ref_grads = step(eager)
        (outs, grads), code = run_and_get_code(step, compiled)
    code = '\n'.join(code)
    assert 'hrnet_mm.train_conv3x3' in code and 'hrnet_mm.batch_norm_act' in code
    assert 'hrnet_mm.train_conv3x3_backward' in code and 'hrnet_mm.batch_norm_act_backward' in code
    for a, b in zip((*outs, *grads, *model.buffers()), (*ref, *ref_grads, *eager.buffers())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
