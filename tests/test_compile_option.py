"""``HRNet(compile=...)``: the forward runs through ``torch.compile``, with the same results, and the compiled
function stays out of copies, pickles, deploy models, exports and TorchScript.

The fast tests use dynamo's ``eager`` backend (the traced graph run op by op: bit-identical results, no code
generation); the inductor test, which generates and compiles C++ for the forward and backward, is slow.
"""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from conftest import TINY_EXTRA, randomize_, rel_err
from mmengine.config import ConfigDict

from hrnet_mm.models import HRNet

EAGER = dict(backend='eager', fullgraph=True)


def _pair(compile_arg, **kwargs):
    plain = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA), **kwargs))
    compiled = HRNet(extra=copy.deepcopy(TINY_EXTRA), compile=compile_arg, **kwargs)
    compiled.load_state_dict(plain.state_dict())
    return plain, compiled


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    sum(o.square().mean() for o in model(x)).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_compiled_forward_and_gradients_equal_the_plain_module():
    # channels_last=False: compiled code runs the plain layers, so the plain module must as well to be bit-equal (the
    # default would run its CPU training kernels in the eager training step)
    plain, compiled = _pair(EAGER, channels_last=False)
    x = torch.randn(2, 3, 64, 96)
    for mode in ('train', 'eval'):
        getattr(plain, mode)()
        getattr(compiled, mode)()
        with torch.no_grad():
            for a, b in zip(compiled(x), plain(x)):
                assert torch.equal(a, b)
    assert '_compiled' in compiled.__dict__
    plain.train(), compiled.train()
    ga, gb = _grads(compiled, x), _grads(plain, x)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)
    assert compiled.state_dict().keys() == plain.state_dict().keys()


def test_copies_and_pickles_compile_their_own_forward():
    _, compiled = _pair(EAGER)
    x = torch.randn(1, 3, 64, 64)
    compiled.eval()(x)
    for other in (copy.deepcopy(compiled), pickle.loads(pickle.dumps(compiled))):
        assert '_compiled' not in other.__dict__ and other.compile_options == EAGER
        with torch.no_grad():
            for a, b in zip(other(x), compiled(x)):
                assert torch.equal(a, b)
        assert other.__dict__['_compiled'] is not compiled.__dict__['_compiled']


def test_deploy_export_and_script_use_the_plain_forward():
    from hrnet_mm.deploy import to_deploy
    from hrnet_mm.deploy.export import prepare
    plain, compiled = _pair(EAGER)
    plain.eval(), compiled.eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = plain(x)
        deployed = to_deploy(compiled)  # fx-traces the forward: would fail on the compiled call
        assert compiled.compile_options == EAGER  # the caller's module keeps its option
        for a, b in zip(deployed(x.contiguous(memory_format=torch.channels_last)), ref):
            assert rel_err(a, b) < 1e-4
        exported, _ = prepare(compiled)
        assert exported.compile_options is None
        scripted = torch.jit.script(compiled)
        for a, b in zip(scripted(x), ref):
            assert torch.equal(a, b)


def test_compile_option_from_a_config_and_bad_values():
    from hrnet_mm.registry import MODELS
    model = MODELS.build(ConfigDict(type='HRNet', extra=copy.deepcopy(TINY_EXTRA), compile=dict(backend='eager')))
    assert model.compile_options == dict(backend='eager')
    assert HRNet(extra=copy.deepcopy(TINY_EXTRA), compile=True).compile_options == {}
    assert HRNet(extra=copy.deepcopy(TINY_EXTRA)).compile_options is None
    with pytest.raises(TypeError, match='compile must be a bool or a dict of torch.compile arguments'):
        HRNet(extra=copy.deepcopy(TINY_EXTRA), compile='inductor')


@pytest.mark.slow
def test_inductor_training_step_matches_the_plain_module():
    """Inductor reorders float32 sums (fused norms), so gradients agree to rounding, checked in float64 where
    rounding is ~1e-15 and a wrong graph would differ at O(1)."""
    plain, compiled = _pair(True, channels_last=True)
    plain.double().train(), compiled.double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    ga, gb = _grads(compiled, x), _grads(plain, x)
    assert max(rel_err(ga[k], gb[k]) for k in gb) < 1e-9
