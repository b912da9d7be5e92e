"""``torch.compile`` of hrnet_mm's HRNet: the same results as eager, and the CPU kernels' classes stay out of deploy
models, exports and TorchScript.

The tests use dynamo's ``eager`` backend (the traced graph run op by op: bit-identical results, no code
generation) with ``fullgraph=True`` (a graph break fails). Inductor, which generates and compiles C++ for the
forward and backward, is tested where hrnet_mm's own operators meet it: the training step with the CPU kernels
(tests/ops/test_operators.py) and the deploy model (tests/deploy/test_export.py).
"""
from __future__ import annotations

import copy

import torch
from conftest import TINY_EXTRA, randomize_, rel_err

from hrnet_mm.models import HRNet
from hrnet_mm.ops import uses_cpu_kernels

EAGER = dict(backend='eager', fullgraph=True)


def _pair(**kwargs):
    """(plain module, module of the same weights built with ``kwargs``)."""
    plain = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA), cpu_kernels=False))
    other = HRNet(extra=copy.deepcopy(TINY_EXTRA), **kwargs)
    other.load_state_dict(plain.state_dict())
    return plain, other


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    sum(o.square().mean() for o in model(x)).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_compiled_forward_and_gradients_equal_the_plain_module():
    """Dynamo's graph of the plain module, run op by op, equals the module bit for bit, in training and in eval
    mode (the module with the CPU kernels: tests/ops/test_operators.py)."""
    plain, model = _pair(cpu_kernels=False)
    compiled = torch.compile(model, **EAGER)
    x = torch.randn(2, 3, 64, 96)
    for mode in ('train', 'eval'):
        getattr(plain, mode)()
        getattr(model, mode)()
        with torch.no_grad():
            for a, b in zip(compiled(x), plain(x)):
                assert torch.equal(a, b)
    plain.train(), model.train()
    ga, gb = _grads(compiled, x), _grads(plain, x)
    assert {k.replace('_orig_mod.', '') for k in ga} == gb.keys()
    assert all(torch.equal(ga[k], gb[k.replace('_orig_mod.', '')]) for k in ga)


def test_deploy_export_and_script_use_the_plain_classes():
    from hrnet_mm.deploy import to_deploy
    from hrnet_mm.deploy.export import prepare
    plain, model = _pair()
    plain.eval(), model.eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = plain(x)
        deployed = to_deploy(model)
        for a, b in zip(deployed(x.contiguous(memory_format=torch.channels_last)), ref):
            assert rel_err(a, b) < 1e-4
        exported, _ = prepare(model)
        assert not uses_cpu_kernels(exported) and not uses_cpu_kernels(deployed)
        scripted = torch.jit.script(model)
        for a, b in zip(scripted(x), ref):
            assert torch.equal(a, b)
    assert uses_cpu_kernels(model)  # the caller's module keeps its kernels
