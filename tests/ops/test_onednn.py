"""hrnet_mm.ops.onednn: oneDNN's convolutions called directly, against float64 convolutions of the same operands
(the int8 ones: of the same integers) and against torch's own operators (torch.ops.onednn.qconv2d_pointwise,
torch.ops.mkldnn._convolution_pointwise)."""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from hrnet_mm.deploy.precision import int8_weight_max
from hrnet_mm.deploy.runtimes import native_bf16
from hrnet_mm.ops import onednn


@pytest.fixture(scope='module')
def ext():
    if not onednn.available():
        if onednn.library() is not None and (shutil.which('c++') or shutil.which('g++')):
            pytest.fail(f'oneDNN and a C++ compiler are here but the extension did not build: {onednn.build_error()}')
        pytest.skip(f'hrnet_mm.ops.onednn unavailable: {onednn.build_error()}')
    return onednn.extension()


def _operands(n, c, k, h, w, kernel, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(k, c, kernel, kernel, generator=g)
    bias = torch.randn(k, generator=g)
    x_scale, x_zero_point = float(x.max() - x.min()) / 255, 100
    q = torch.clamp(torch.round(x / x_scale) + x_zero_point, 0, 255).to(torch.uint8)
    w_max = int8_weight_max()  # as Int8Conv2d: 7 bits where oneDNN adds pairs of products in int16
    w_scale = weight.abs().amax(dim=(1, 2, 3)) / w_max
    qweight = torch.clamp(torch.round(weight / w_scale.view(-1, 1, 1, 1)), -w_max, w_max).to(torch.int8)
    return q.contiguous(memory_format=torch.channels_last), qweight, w_scale, bias, x_scale, x_zero_point


def _expected(q, qweight, w_scale, bias, x_scale, x_zero_point, stride, padding, dilation, relu, accum):
    x = (q.double() - x_zero_point) * x_scale
    weight = qweight.double() * w_scale.double().view(-1, 1, 1, 1)
    y = F.conv2d(x, weight, None if bias is None else bias.double(), stride, padding, dilation)
    y = y + accum.double() if accum is not None else y
    return F.relu(y) if relu else y


GEOMETRIES = [((1, 32, 24, 20), 3, 1, 1, 1), ((2, 16, 13, 11), 3, 2, 1, 1), ((1, 64, 6, 8), 1, 1, 0, 1),
              ((1, 8, 15, 9), 3, 1, 2, 2), ((1, 3, 17, 14), 3, 2, 1, 1)]
SUMMANDS = [(False, onednn.SUMMAND_NONE), (True, onednn.SUMMAND_NONE), (True, onednn.SUMMAND_INTO),
            (False, onednn.SUMMAND_INTO), (True, onednn.SUMMAND_ADD)]


def _run(conv, x, summand_mode, summand):
    """``conv.run`` with the summand (a copy, to check what happens to it); the result and the copy."""
    if summand_mode == onednn.SUMMAND_NONE:
        return conv.run(x), None
    given = summand.clone()
    y = conv.run(x, given)
    assert (y.data_ptr() == given.data_ptr()) == (summand_mode == onednn.SUMMAND_INTO)
    if summand_mode == onednn.SUMMAND_ADD:
        assert torch.equal(given, summand)  # only read
    return y, given


@pytest.mark.parametrize('shape,kernel,stride,padding,dilation', GEOMETRIES)
@pytest.mark.parametrize('relu,summand_mode', SUMMANDS)
def test_int8_conv_equals_float_conv_of_its_operands(ext, shape, kernel, stride, padding, dilation, relu,
                                                     summand_mode):
    """relu?(x_scale * w_scale[k] * sum((q - zp) w) + bias [+ summand]) in float32, channels_last; the summand
    written into (SUMMAND_INTO) or read (SUMMAND_ADD). Against float64 of the same integers: float32 rounding
    (1e-5 of the scale)."""
    n, c, h, w = shape
    q, qweight, w_scale, bias, x_scale, zp = _operands(n, c, 24, h, w, kernel)
    conv = onednn.conv(q.shape, qweight, bias, (stride, stride), (padding, padding), (dilation, dilation), relu,
                       summand_mode, w_scale, x_scale, zp)
    out_shape = tuple(conv.output_shape)
    summand = torch.randn(out_shape).contiguous(memory_format=torch.channels_last) if summand_mode else None
    expected = _expected(q, qweight, w_scale, bias, x_scale, zp, stride, padding, dilation, relu, summand)
    y, _ = _run(conv, q, summand_mode, summand)
    assert y.shape == expected.shape == out_shape and y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert ((y.double() - expected).abs().max() / expected.abs().max()).item() < 1e-5


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5), pytest.param(
    torch.bfloat16, 2e-2, marks=pytest.mark.skipif(not native_bf16(), reason='oneDNN has no bfloat16 convolution '
                                                   'without AVX512_BF16 / AMX (and the bf16 deploy refuses)'))])
@pytest.mark.parametrize('shape,kernel,stride,padding,dilation', GEOMETRIES[:3])
@pytest.mark.parametrize('relu,summand_mode', SUMMANDS)
def test_float_conv_equals_float64_conv(ext, dtype, tol, shape, kernel, stride, padding, dilation, relu, summand_mode):
    """float32 and bfloat16: relu?(conv(x, w) + bias [+ summand]) in the weight's type, against float64 (float32:
    1e-5 of the scale; bfloat16: its 8 bits, on bfloat16 operands)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(24, shape[1], kernel, kernel, generator=g) / (shape[1] * kernel * kernel) ** 0.5).to(dtype)
    bias = torch.randn(24, generator=g)
    conv = onednn.conv(x.shape, weight, bias, (stride, stride), (padding, padding), (dilation, dilation), relu,
                       summand_mode)
    summand = torch.randn(tuple(conv.output_shape), generator=g).to(dtype).contiguous(
        memory_format=torch.channels_last) if summand_mode else None
    expected = F.conv2d(x.double(), weight.double(), bias.double(), stride, padding, dilation)
    expected = expected + summand.double() if summand is not None else expected
    expected = F.relu(expected) if relu else expected
    y, _ = _run(conv, x, summand_mode, summand)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert ((y.double() - expected).abs().max() / expected.abs().max()).item() < tol


@pytest.mark.parametrize('shape,kernel,stride,padding,dilation', GEOMETRIES)
@pytest.mark.parametrize('relu,y_zero_point', [(True, 0), (False, 131)])
def test_int8_conv_with_uint8_result_quantizes_the_float_one(ext, shape, kernel, stride, padding, dilation, relu,
                                                             y_zero_point):
    """With ``y_scale`` the result is the float32 one quantized on the next layer's grid, as hrnet_mm's quantizer
    does (round half to even of y / y_scale): equal but for ties that oneDNN's own float arithmetic (which scales
    by a product of the scales) puts on the other side, at most one step and rarely."""
    from hrnet_mm.deploy.precision import quantize_u8
    n, c, h, w = shape
    q, qweight, w_scale, bias, x_scale, zp = _operands(n, c, 24, h, w, kernel, seed=3)
    args = (q.shape, qweight, bias, (stride,) * 2, (padding,) * 2, (dilation,) * 2, relu, onednn.SUMMAND_NONE,
            w_scale, x_scale, zp)
    y = onednn.conv(*args).run(q)
    y_scale = float(y.max() - y.min()) / 200
    out = onednn.conv(*args, y_scale, y_zero_point).run(q)
    assert out.dtype == torch.uint8 and out.shape == y.shape and out.is_contiguous(memory_format=torch.channels_last)
    expected = quantize_u8(y, y_scale, y_zero_point)
    diff = (out.int() - expected.int()).abs()
    assert diff.max().item() <= 1 and diff.float().mean().item() < 1e-3
    with pytest.raises(RuntimeError, match='uint8 output'):
        onednn.conv(*args[:7], onednn.SUMMAND_ADD, *args[8:], y_scale, y_zero_point)


def test_int8_conv_equals_torch_operator_without_bias_and_on_one_thread(ext):
    """The same numbers as torch.ops.onednn.qconv2d_pointwise (both run oneDNN's int8 kernels), with no bias, at
    one thread and at two (oneDNN reads torch's OpenMP thread count at every call)."""
    q, qweight, w_scale, _, x_scale, zp = _operands(1, 32, 48, 20, 16, 3, seed=1)
    packed = torch.ops.onednn.qconv_prepack(qweight.contiguous(memory_format=torch.channels_last), w_scale, x_scale,
                                            zp, [1, 1], [1, 1], [1, 1], 1, list(q.shape))
    expected = torch.ops.onednn.qconv2d_pointwise.default(q, x_scale, zp, packed, w_scale,
                                                          torch.zeros(48, dtype=torch.long), None, [1, 1], [1, 1],
                                                          [1, 1], 1, 1.0, 0, torch.float32, 'relu', [], '')
    conv = onednn.conv(q.shape, qweight, None, (1, 1), (1, 1), (1, 1), True, onednn.SUMMAND_NONE, w_scale, x_scale,
                       zp)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            y = conv.run(q)
            assert ((y - expected).abs().max() / expected.abs().max()).item() < 1e-6
    finally:
        torch.set_num_threads(threads)


def test_weight_memory_holds_the_reordered_weight_and_survives_a_flush(ext):
    """``weight_memory`` (what hrnet_mm.ops.winograd's timing flushes) spans at least the weight's bytes, and
    flushing it from the caches changes no result."""
    from hrnet_mm.ops import winograd
    x = torch.randn(1, 16, 10, 12).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(24, 16, 3, 3)
    conv = onednn.conv(x.shape, weight, None, (1, 1), (1, 1), (1, 1), False)
    address, nbytes = conv.weight_memory
    assert address != 0 and nbytes >= weight.numel() * 4
    before = conv.run(x)
    if winograd.available():
        winograd.flush_memory(address, nbytes)
    assert torch.equal(conv.run(x), before)


def test_conv_refuses_inputs_it_was_not_made_for(ext):
    q, qweight, w_scale, bias, x_scale, zp = _operands(1, 8, 16, 10, 12, 3)
    conv = onednn.conv(q.shape, qweight, bias, (1, 1), (1, 1), (1, 1), False, onednn.SUMMAND_INTO, w_scale, x_scale,
                       zp)
    summand = torch.zeros(1, 16, 10, 12).contiguous(memory_format=torch.channels_last)
    for args, message in (((q.float(), summand), 'input must be a channels_last Byte tensor of shape'),
                          ((q[:, :, :9], summand), 'input must be a channels_last Byte tensor of shape'),
                          ((q.contiguous(), summand), 'input must be a channels_last Byte tensor of shape'),
                          ((q, None), 'this convolution adds a summand'),
                          ((q, summand.double()), 'summand must be a channels_last Float tensor')):
        with pytest.raises(RuntimeError, match=message):
            conv.run(*args)
    for weight, scale, message in ((qweight, None, 'an int8 weight needs w_scale'),
                                   (qweight.double(), None, 'int8, float32 or bfloat16'),
                                   (qweight[:, :4], w_scale, "must have the input's C")):
        with pytest.raises(RuntimeError, match=message):
            onednn.conv(q.shape, weight, bias, (1, 1), (1, 1), (1, 1), False, 0, scale, x_scale, zp)


def test_unavailable_without_the_packages_or_when_disabled(monkeypatch):
    """Without the oneDNN packages (or with HRNET_MM_ONEDNN=0) nothing is built and int8_conv says why."""
    monkeypatch.setenv('HRNET_MM_ONEDNN', '0')
    assert not onednn.available() and onednn.build_error() == 'disabled by HRNET_MM_ONEDNN'
    with pytest.raises(RuntimeError, match='disabled by HRNET_MM_ONEDNN'):
        onednn.conv((1, 3, 8, 8), torch.zeros(4, 3, 1, 1), None, (1, 1), (0, 0), (1, 1), False)
    monkeypatch.setenv('HRNET_MM_ONEDNN', '1')
    monkeypatch.setattr(onednn, 'library', lambda: None)
    onednn._load.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            assert onednn.extension() is None
        assert 'onednn-cpu-gomp' in onednn.build_error()
    finally:
        onednn._load.cache_clear()
