"""The fused graph's replay (hrnet_mm.deploy.replay): the second call of an input signature skips the modules and
gives the graph's outputs bit for bit; whatever could make a replay stale sends the call back to the graph."""
from __future__ import annotations

import copy
import io
from unittest import mock

import pytest
import torch
from conftest import TINY_EXTRA, randomize_

from hrnet_mm.deploy import OneDNNConv2d, to_deploy
from hrnet_mm.deploy.replay import PlannedGraphModule, _Replay
from hrnet_mm.deploy.runtimes import native_bf16
from hrnet_mm.models import HRNet

CL = torch.channels_last


@pytest.fixture(scope='module')
def model():
    return randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()


def _input(h=64, w=48, n=1):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(h * w + n)).contiguous(memory_format=CL)


def _graph_outputs(deploy, x):
    """The outputs of the graph itself (fx's generated code, every module called)."""
    with torch.no_grad():
        return deploy._graph_forward(x)


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def test_third_call_replays_without_the_modules(model):
    """The first call of a signature runs the graph, the second records, the third replays."""
    d = to_deploy(model)
    assert isinstance(d, PlannedGraphModule)
    x = _input()
    with torch.no_grad():
        first = d(x)
        assert len(d._replays) == 1 and not isinstance(next(iter(d._replays.values())), _Replay)
        second = d(x)
        assert isinstance(next(iter(d._replays.values())), _Replay)
        with mock.patch.object(OneDNNConv2d, 'forward', side_effect=AssertionError('module called')):
            third = d(x)
    assert _equal(first, second) and _equal(second, third) and _equal(third, _graph_outputs(d, x))


def test_signatures_met_once_are_not_recorded(model):
    d = to_deploy(model)
    with torch.no_grad(), mock.patch.object(PlannedGraphModule, '_record', side_effect=AssertionError('recorded')):
        for h in range(64, 64 + 2 * 10, 2):  # more sizes than the replays kept
            d(_input(h, 48))


def test_each_input_signature_records_its_own_replay(model):
    d = to_deploy(model)
    with torch.no_grad():
        for shape in ((64, 48, 1), (97, 130, 1), (64, 48, 2)):
            x = _input(*shape)
            d(x)
            assert _equal(d(x), _graph_outputs(d, x))
        nchw = _input(64, 48).contiguous()  # another memory format is another signature
        assert _equal(d(nchw), _graph_outputs(d, nchw))
    assert len(d._replays) == 4


def _replaying(model):
    """A deploy model that has recorded one input's replay, and that input."""
    d, x = to_deploy(model), _input()
    with torch.no_grad():
        d(x)
        d(x)
    return d, x


def test_a_hook_added_after_recording_is_called(model):
    d, x = _replaying(model)
    with torch.no_grad():
        conv = next(m for m in d.modules() if isinstance(m, OneDNNConv2d))
        seen = []
        handle = conv.register_forward_hook(lambda *args: seen.append(1))
        out = d(x)
        handle.remove()
        assert seen == [1] and _equal(out, _graph_outputs(d, x))
        d(x)  # without the hook: recorded again, then replayed
        with mock.patch.object(OneDNNConv2d, 'forward', side_effect=AssertionError('module called')):
            assert _equal(d(x), out)


def test_a_replaced_module_is_called(model):
    d, x = _replaying(model)
    with torch.no_grad():
        name = next(n for n, m in d.named_children() if isinstance(m, OneDNNConv2d))
        old = getattr(d, name)
        new = copy.deepcopy(old)
        new.weight.mul_(2.0)
        setattr(d, name, new)
        changed = d(x)
        setattr(d, name, old)
        assert _equal(d(x), _graph_outputs(d, x))
        assert not _equal(changed, d(x))


def test_a_changed_graph_drops_its_replays(model):
    """A pass that rewrites the graph (new nodes, the same modules) and recompiles it: the next calls run the new
    graph, not a replay recorded on the old one."""
    d, x = _replaying(model)
    with torch.no_grad():
        before = d(x)
        output = next(n for n in d.graph.nodes if n.op == 'output')
        with d.graph.inserting_before(output):
            doubled = d.graph.call_function(torch.mul, (output.args[0][0], 2.0))
        output.args = ((doubled, *output.args[0][1:]),)
        d.recompile()
        assert not d._replays
        after = d(x)
    assert torch.equal(after[0], 2.0 * before[0]) and _equal(after[1:], before[1:])


def test_grad_mode_copies_conversions_and_pickles_leave_no_stale_replay(model):
    d = to_deploy(model)
    x = _input()
    with torch.no_grad():
        ref = d(x)
        d(x)
    assert _equal(d(x), ref)  # autograd on: the graph runs
    for copied in (copy.deepcopy(d), torch.load(_saved(d), weights_only=False)):
        assert not getattr(copied, '_replays', None)
        with torch.no_grad():
            assert _equal(copied(x), ref) and _equal(copied(x), ref)
    d.to(torch.float64)  # .to() drops the prepared kernels and the replays with them
    assert not d._replays
    with torch.no_grad():
        out = d(x.double())
        assert _equal(d(x.double()), out)
        assert all(o.dtype == torch.float64 for o in out)


def _saved(module):
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return buffer


def test_global_hooks_send_calls_to_the_graph(model):
    d = to_deploy(model)
    x = _input()
    seen = []
    with torch.no_grad():
        d(x)
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, out: seen.append(type(module)) if isinstance(module, OneDNNConv2d) else None)
        try:
            d(x)
        finally:
            handle.remove()
    assert seen  # the fused convolutions were called as modules


@pytest.mark.parametrize('precision', [pytest.param('bf16', marks=pytest.mark.skipif(
    not native_bf16(), reason='the processor has no native bfloat16')), 'int8'])
def test_bfloat16_and_int8_models_replay(model, precision):
    x = _input()
    d = to_deploy(model, precision=precision, calibration=[x.contiguous()] if precision == 'int8' else None)
    graph = next(m for m in d.modules() if isinstance(m, PlannedGraphModule))
    with torch.no_grad():
        first = d(x)
        d(x)
        conv = type(getattr(graph, 'onednn_conv0'))
        with mock.patch.object(conv, 'forward', side_effect=AssertionError('module called')):
            assert _equal(d(x), first)
