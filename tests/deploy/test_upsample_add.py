"""The fuse step in the deploy graph (hrnet_mm.deploy.upsample_add): every sum with a nearest upsampling [and its
ReLU] becomes one ``hrnet_mm::upsample_add`` call whose outputs equal the unfused graph's bit for bit; a sum is
written into its operand only where nothing else reads it.

References: the same model deployed without the rewrite (torch's interpolate, add and ReLU), and the eager
module."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TINY_EXTRA, randomize_

from hrnet_mm.deploy import fuse_onednn, to_deploy
from hrnet_mm.deploy import upsample_add as ua
from hrnet_mm.deploy.runtimes import native_bf16
from hrnet_mm.models import HRNet

CL = torch.channels_last


def _calls(module):
    """The upsample_add nodes of every graph in ``module``, and how many write into their first operand."""
    nodes = [n for m in module.modules() if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes
             if n.target is ua.upsample_add]
    return len(nodes), sum(bool(n.args[3]) for n in nodes)


def _nearest_sums(module):
    """The sums with a nearest upsampling left in ``module``'s graphs."""
    return sum(1 for m in module.modules() if isinstance(m, torch.fx.GraphModule) for n in m.graph.nodes
               if n.target is F.interpolate and any(u.target is ua.operator.add for u in n.users))


@pytest.fixture(scope='module')
def model():
    return randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_hrnet_fuse_layers_become_one_call_each_with_the_same_outputs(kernel, model, monkeypatch, precision):
    """TINY_EXTRA's fuse layers have 1 + 2 x 3 + 2 x 6 = 19 upsampled sums (stage 2: one; each stage-3 module: 2
    into branch 0, 1 into branch 1; each stage-4 module: 3 + 2 + 1); at an odd size (torch's float index rule) the
    outputs equal the unfused graph's."""
    if precision == 'bf16' and not native_bf16():
        pytest.skip('this processor has no native bfloat16')
    x = torch.randn(1, 3, 67, 45, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=CL)
    with torch.no_grad():
        fused = to_deploy(model, precision=precision)
        monkeypatch.setattr(ua, 'available', lambda: False)
        plain = to_deploy(model, precision=precision)
        calls, inplace = _calls(fused)
        assert (calls, _nearest_sums(fused)) == (19, 0) and _calls(plain) == (0, 0) and _nearest_sums(plain) == 19
        assert 0 < inplace < calls  # a second sum into branch 0 goes into the first one's fresh result
        for _ in range(3):  # the graph, the recording, the replay
            assert all(torch.equal(a, b) for a, b in zip(fused(x), plain(x)))


class _Sum(nn.Module):
    def __init__(self, mode='nearest', relu=True, like_other=False):
        super().__init__()
        self.mode, self.relu, self.like_other = mode, relu, like_other

    def forward(self, a, b, c):
        y = a + F.interpolate(b, size=(c if self.like_other else a).shape[-2:], mode=self.mode)
        return F.relu(y) if self.relu else y


def _maps(*shapes):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(*s, generator=g).contiguous(memory_format=CL) for s in shapes]


def test_an_input_is_not_written_into(kernel):
    """``a`` is the caller's tensor (not a fresh result): the sum goes into a new tensor and ``a`` stays."""
    gm = fuse_onednn(_Sum())
    a, b, c = _maps((1, 8, 12, 10), (1, 8, 6, 5), (1, 8, 12, 10))
    before = a.clone()
    assert _calls(gm) == (1, 0)
    assert torch.equal(gm(a, b, c), _Sum()(a, b, c)) and torch.equal(a, before)


def test_a_size_from_another_map_broadcasts_as_torch_does(kernel):
    """``size`` from ``c``: where ``a``'s size differs, the sum broadcasts (or fails) exactly as the module's."""
    module = _Sum(like_other=True)
    gm = fuse_onednn(module)
    assert _calls(gm) == (1, 0)
    for shapes in [((1, 8, 12, 10), (1, 8, 6, 5), (1, 8, 12, 10)), ((1, 8, 1, 1), (1, 8, 6, 5), (1, 8, 12, 10))]:
        maps = _maps(*shapes)
        assert torch.equal(gm(*maps), module(*maps))
    with pytest.raises(RuntimeError):
        gm(*_maps((1, 8, 3, 3), (1, 8, 6, 5), (1, 8, 12, 10)))


@pytest.mark.parametrize('mode', ['bilinear', 'bicubic'])
def test_other_interpolations_stay(kernel, mode):
    gm = fuse_onednn(_Sum(mode=mode))
    assert _calls(gm) == (0, 0)


def test_without_the_kernels_the_graph_keeps_torchs_ops(model, monkeypatch):
    monkeypatch.setattr(ua, 'available', lambda: False)
    assert _calls(to_deploy(model)) == (0, 0)


def test_a_saved_deploy_model_loads_with_the_calls(kernel, model):
    """Loading re-traces the saved graph code: the calls stay calls, and the outputs stay the same."""
    import io
    d = to_deploy(model)
    x = torch.randn(1, 3, 64, 48).contiguous(memory_format=CL)
    buffer = io.BytesIO()
    torch.save(d, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert _calls(loaded) == _calls(d)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(x), d(x)))
