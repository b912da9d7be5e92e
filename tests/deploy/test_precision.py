"""Reduced-precision deploy models (``to_deploy(precision='bf16' | 'int8')``): checked against float32 models and
torch's own quantization, and every refusal is one clear error."""
from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TINY_EXTRA, randomize_, rel_err

from hrnet_mm.deploy import precision as precision_mod
from hrnet_mm.deploy import to_deploy
from hrnet_mm.deploy.fold import OneDNNConv2d
from hrnet_mm.deploy.precision import Bfloat16Module, Int8Conv2d, PrecisionError, quantize_u8
from hrnet_mm.deploy.runtimes import native_bf16
from hrnet_mm.models import HRNet, HRNetV2Neck
from hrnet_mm.models.blocks import BasicBlock

needs_bf16 = pytest.mark.skipif(not native_bf16(), reason='the processor has no native bfloat16')


def _tiny() -> nn.Module:
    return randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()


def _inputs(n: int, size=(64, 96), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *size, generator=g) for _ in range(n)]


@pytest.mark.parametrize('scale,zero_point', [(0.05, 0), (0.37, 128), (2e-3, 255)])
def test_quantize_u8_equals_torch_per_tensor_quantization(scale, zero_point):
    """Both paths (hrnet_mm's kernel where built, torch's quantization otherwise) give torch's integers, memory
    format kept; values far outside the grid saturate."""
    x = (torch.randn(2, 24, 7, 9) * 40).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        expected = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).int_repr()
    q = quantize_u8(x, scale, zero_point)
    assert q.dtype == torch.uint8 and q.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(q, expected)


@pytest.fixture(params=['direct', 'torch-operator'])
def int8_path(request, monkeypatch):
    """Int8Conv2d's two ways to oneDNN's int8 convolution: hrnet_mm.ops.onednn's prepared primitive (where the
    oneDNN packages are installed) and torch's operator; yields the path and the int8 primitives made."""
    from hrnet_mm.ops import onednn
    if request.param == 'direct' and not onednn.available():
        pytest.skip(f'hrnet_mm.ops.onednn unavailable: {onednn.build_error()}')
    monkeypatch.setenv('HRNET_MM_ONEDNN', '1' if request.param == 'direct' else '0')
    made = []
    make = onednn.conv
    monkeypatch.setattr(onednn, 'conv', lambda *args: (made.append(args) if args[1].dtype == torch.int8 else None)
                        or make(*args))
    yield request.param, made


@pytest.mark.parametrize('stride,kernel,relu,add', [(1, 3, True, False), (2, 3, False, False), (1, 1, True, True),
                                                    (1, 3, False, True)])
def test_int8_conv_equals_float_conv_of_the_quantized_operands(stride, kernel, relu, add, int8_path):
    """oneDNN's int8 convolution computes exactly relu(conv(dequant(q(x)), dequant(q(w))) + b [+ other]): equal
    to float32 rounding (1e-5 of the output's scale), called directly or through torch's operator."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, kernel, stride, kernel // 2)
    x = torch.randn(2, 16, 12, 10).contiguous(memory_format=torch.channels_last)
    fused = OneDNNConv2d(conv, relu=relu, add=add)
    q = Int8Conv2d(fused, float(x.min()), float(x.max()))
    other = torch.randn(2, 24, 12 // stride, 10 // stride) if add else None
    y = q(x, other.contiguous(memory_format=torch.channels_last).clone()) if add else q(x)
    xd = (quantize_u8(x, q.x_scale, q.x_zero_point).float() - q.x_zero_point) * q.x_scale
    wd = q.qweight.float() * q.w_scale.view(-1, 1, 1, 1)
    expected = F.conv2d(xd, wd, conv.bias, stride, kernel // 2)
    expected = expected + other if add else expected
    expected = F.relu(expected) if relu else expected
    assert y.dtype == torch.float32 and rel_err(y, expected) < 1e-5
    assert rel_err(y, fused(x, other) if add else fused(x)) < 3e-2  # and near the float32 convolution
    path, made = int8_path
    assert len(made) == (1 if path == 'direct' else 0)


@pytest.mark.parametrize('dot_product', [True, False])
def test_int8_weights_never_saturate_oneDNN_without_dot_products(dot_product, int8_path, monkeypatch):
    """Without VNNI or AMX, oneDNN adds pairs of uint8 x int8 products in int16 (vpmaddubsw): the weights then
    take 7 bits (|q_w| <= 63, 2 * 255 * 63 < 2 ** 15), and the convolution is still exactly that of its quantized
    operands where the processor has no dot product; a model made with 8-bit weights refuses to run there."""
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 16, 3, 1, 1)
    x = (torch.rand(1, 32, 9, 7) * 4).contiguous(memory_format=torch.channels_last)  # mostly large activations
    with monkeypatch.context() as patch:
        patch.setattr(precision_mod, 'native_int8', lambda: dot_product)
        q = Int8Conv2d(OneDNNConv2d(conv), 0.0, float(x.max()))
    assert q.w_max == (127 if dot_product else 63) and int(q.qweight.abs().max()) == q.w_max
    assert f'w_max={q.w_max}' in repr(q)
    if dot_product and not precision_mod.native_int8():  # it would saturate here: the model says so instead
        with pytest.raises(RuntimeError, match='dot-product instruction.*make the int8 model again here'):
            q(x)
        return
    xd = (quantize_u8(x, q.x_scale, q.x_zero_point).float() - q.x_zero_point) * q.x_scale
    wd = q.qweight.float() * q.w_scale.view(-1, 1, 1, 1)
    assert rel_err(q(x), F.conv2d(xd, wd, conv.bias, 1, 1)) < 1e-5


def test_int8_conv_hands_the_next_one_its_input_quantized(int8_path):
    """A convolution that quantizes its result for the next one (Int8Conv2d.quantize_output) gives it the uint8
    input that it would have made itself from the float32 result: the same output (torch's operator: the same
    quantizer, so equal; oneDNN: its own rounding of ties, so equal to int8 rounding)."""
    torch.manual_seed(0)
    first = Int8Conv2d(OneDNNConv2d(nn.Conv2d(16, 24, 3, 1, 1), relu=True), -3.0, 3.0)
    second = Int8Conv2d(OneDNNConv2d(nn.Conv2d(24, 8, 3, 1, 1)), 0.0, 4.0)
    x = torch.randn(1, 16, 12, 10).contiguous(memory_format=torch.channels_last)
    expected = second(first(x))
    first.quantize_output(second.x_scale, second.x_zero_point)
    q = first(x)
    assert q.dtype == torch.uint8 and q.is_contiguous(memory_format=torch.channels_last)
    assert 'out_scale' in repr(first)
    y = second(q)
    if int8_path[0] == 'torch-operator':
        assert torch.equal(y, expected)
    else:
        assert rel_err(y, expected) < 1e-2
    summed = Int8Conv2d(OneDNNConv2d(nn.Conv2d(16, 24, 3, 1, 1), add=True), -3.0, 3.0)
    with pytest.raises(ValueError, match='summand'):
        summed.quantize_output(0.1, 0)


def test_int8_deploy_quantizes_a_shared_input_once(int8_path, monkeypatch):
    """A result that several convolutions read on one grid (each branch's output, read by every other branch's
    fuse convolution) is quantized once, by a QuantizeU8 in the graph, and the outputs are the same integers'
    results as when each convolution quantizes it itself (bit-equal)."""
    model, calibration, x = _tiny(), _inputs(2), _inputs(1, seed=1)[0]
    calls = []
    quantizer = precision_mod._quantizer
    monkeypatch.setattr(precision_mod, '_quantizer', lambda: lambda *a: calls.append(a[1:]) or quantizer()(*a))
    shared = to_deploy(model, precision='int8', calibration=calibration)
    monkeypatch.setattr(precision_mod, '_share_quantizations', lambda model: None)
    separate = to_deploy(model, precision='int8', calibration=calibration)
    sharers = [m for m in shared.modules() if isinstance(m, precision_mod.QuantizeU8)]
    # each branch's output in stage 3 (two modules of three branches: two fuse convolutions read it) and stage 4
    # (two of four: three read it); the stem's output (the bottleneck's first and shortcut convolutions) and the
    # last branch before each of the two later transitions (the next block and the new branch's convolution)
    assert len(sharers) == 2 * 3 + 2 * 4 + 1 + 2 and 'zero_point=' in repr(sharers[0])
    assert sorted(len(n.users) for gm in shared.modules() if isinstance(gm, torch.fx.GraphModule)
                  for n in gm.graph.nodes if n.op == 'call_module' and n.target.startswith('quantize_')
                  ) == [2] * 9 + [3] * 8
    assert not any(isinstance(m, precision_mod.QuantizeU8) for m in separate.modules())
    with torch.no_grad():
        for _ in range(3):  # the second call records the fused graph's replay, the third runs it
            calls.clear()
            y = shared(x)
            n_shared = len(calls)
            calls.clear()
            expected = separate(x)
            assert len(calls) - n_shared == 9 * 1 + 8 * 2  # each sharer saves all but one of its readers' passes
            assert all(torch.equal(a, b) for a, b in zip(y, expected))


def test_int8_deploy_of_hrnet_and_neck(int8_path):
    """Every convolution of the backbone and the HRNetV2 neck becomes int8 (no float32 layer left, no warning);
    outputs within 5% of the float32 model's scale on an input it was not calibrated on (a random network, whose
    activations are wider-tailed than a trained one's; 10% with the 7-bit weights of a processor without an int8
    dot product: simulated in float32, 3.2% and 5.6% on this network), and the summands written in place where
    nothing reads them later."""
    bb = _tiny()
    model = randomize_(nn.Sequential(bb, HRNetV2Neck(bb.out_channels, out_channels=16))).eval()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        d = to_deploy(model, precision='int8', calibration=_inputs(4))
    assert not any(isinstance(m, (nn.Conv2d, OneDNNConv2d)) for m in d.modules())
    convs = [m for m in d.modules() if isinstance(m, Int8Conv2d)]
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert any(m.inplace for m in convs if m.add)
    quantized = [m for m in convs if m.out_scale is not None]  # each residual block's first convolution, at least
    assert len(quantized) >= sum(isinstance(m, BasicBlock) for m in model.modules()) and not any(
        m.add for m in quantized)
    x = _inputs(1, seed=1)[0]
    with torch.no_grad():
        out = d(x)
        for a, b in zip(out, model(x)):
            assert rel_err(a, b) < (5e-2 if precision_mod.native_int8() else 1e-1)
        # saved whole after a call (its packed weights are not saved) and loaded: the same integers, the same output
        buffer = io.BytesIO()
        torch.save(d, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert all(not m._packed and not m._plans for m in loaded.modules() if isinstance(m, Int8Conv2d))
        for a, b in zip(loaded(x), out):
            assert torch.equal(a, b)
    path, made = int8_path
    assert len(made) == (2 * len(convs) if path == 'direct' else 0)  # a primitive per layer, made again once loaded


@needs_bf16
def test_bf16_deploy_of_hrnet():
    """The backbone runs in bfloat16 and hands float32 back: on oneDNN alone (8 mantissa bits: within 3% of the
    output's scale) and with the Winograd tiles that timing picks (F(4x4) rounds more: within 6%, as
    tests/ops/test_winograd.py measures)."""
    m = _tiny()
    x = _inputs(1)[0]
    for winograd, tol in ((False, 3e-2), (None, 6e-2)):
        d = to_deploy(m, precision='bf16', winograd=winograd)
        assert isinstance(d, Bfloat16Module) and d.out_channels == m.out_channels
        assert all(p.dtype == torch.bfloat16 for p in d.parameters())
        with torch.no_grad():
            for a, b in zip(d(x), m(x)):
                assert a.dtype == torch.float32 and rel_err(a, b) < tol


def test_whole_pose_model_in_int8():
    """A whole mmpose model (calibrated with ``model(inputs, data_samples)`` tuples): the head's convolution is
    quantized too, and the heatmaps stay within 10% of the float32 model's scale (a random network calibrated on
    four inputs; trained models are measured on their task metric in docs/benchmarks.md)."""
    from mmengine.registry import DefaultScope
    from mmpose.registry import MODELS
    cfg = dict(type='TopdownPoseEstimator',
               data_preprocessor=dict(type='PoseDataPreprocessor', mean=[123.675, 116.28, 103.53],
                                      std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
               backbone=dict(type='hrnet_mm.HRNet', extra=copy.deepcopy(TINY_EXTRA), out_indices=(0, )),
               head=dict(type='HeatmapHead', in_channels=8, out_channels=17, deconv_out_channels=None,
                         decoder=dict(type='MSRAHeatmap', input_size=(64, 64), heatmap_size=(16, 16), sigma=2)),
               test_cfg=dict(flip_test=False))
    with DefaultScope.overwrite_default_scope('mmpose'):
        model = randomize_(MODELS.build(cfg)).eval()
    d = to_deploy(model, precision='int8', calibration=[(x, None) for x in _inputs(4, (64, 64))])
    assert isinstance(d.head.final_layer, Int8Conv2d)
    x = _inputs(1, (64, 64), seed=2)[0]
    with torch.no_grad():
        assert rel_err(d(x, None), model(x, None)) < 0.1


@pytest.mark.parametrize('kwargs,message', [
    (dict(precision='fp16'), "precision must be one of ('fp32', 'bf16', 'int8')"),
    (dict(precision='int8'), 'needs calibration data'),
    (dict(precision='int8', calibration=[]), 'calibration data is empty'),
    (dict(precision='bf16', calibration=[torch.zeros(1)]), "for precision='int8' only"),
    (dict(precision='int8', calibration=[torch.zeros(1, 3, 64, 64)], compile=True), 'needs the fused deploy model'),
    (dict(precision='int8', calibration=[torch.zeros(1, 3, 64, 64)], winograd=True), 'float32 and bfloat16 only'),
])
def test_bad_requests_are_one_clear_error(kwargs, message):
    with pytest.raises(PrecisionError, match=message.replace('(', r'\(').replace(')', r'\)')):
        to_deploy(_tiny(), **kwargs)


def test_bf16_refused_without_native_bfloat16(monkeypatch):
    monkeypatch.setattr(precision_mod, 'native_bf16', lambda: False)
    with pytest.raises(PrecisionError, match='native bfloat16 .AVX512_BF16 or AMX.'):
        to_deploy(_tiny(), precision='bf16')


@needs_bf16
def test_bf16_winograd_refused_without_the_bf16_kernel(monkeypatch):
    """winograd=True asks for Winograd in bfloat16 too: without its kernel, an error instead of oneDNN alone."""
    from hrnet_mm.ops import winograd
    monkeypatch.setattr(winograd, 'bf16_available', lambda: False)
    with pytest.raises(PrecisionError, match='needs the bfloat16 Winograd kernel'):
        to_deploy(_tiny(), precision='bf16', winograd=True)


def test_int8_refuses_calibration_that_misses_layers():
    """Calibration inputs that never reach a convolution leave it without a range: an error naming it."""
    class TwoWays(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x, second: bool = False):
            return self.b(x) if second else self.a(x)

    with pytest.raises(PrecisionError, match=r'never reached 1 convolutions \(first: b\)'):
        to_deploy(TwoWays(), precision='int8', calibration=_inputs(1))


def test_layers_left_in_float32_are_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    with pytest.warns(UserWarning, match=r'stay float32: Linear x1'):
        to_deploy(model, precision='int8', calibration=[torch.zeros(1, 3, 8, 8)])


def test_deploy_hook_builds_from_a_config():
    """``custom_hooks = [dict(type='hrnet_mm.DeployHook', ...)]`` resolves through mmengine's root registry."""
    from mmengine.registry import HOOKS

    from hrnet_mm.deploy.hook import DeployHook
    hook = HOOKS.build(dict(type='hrnet_mm.DeployHook', precision='int8', calibration_images=8))
    assert isinstance(hook, DeployHook) and (hook.precision, hook.calibration_images) == ('int8', 8)
    with pytest.raises(PrecisionError, match='calibration_images must be at least 1'):
        DeployHook('int8', 0)
