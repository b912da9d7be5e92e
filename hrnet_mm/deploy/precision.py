"""Reduced-precision deploy models: bfloat16 and int8 (``to_deploy(model, precision=...)``).

Both start from the float32 deploy model (BN folded, oneDNN convolutions with fused ReLU and sums:
:func:`hrnet_mm.deploy.fold.fuse_onednn`) and change its convolutions, which hold nearly all of HRNet's arithmetic:

* ``'bf16'`` (:func:`to_bfloat16`): the hrnet_mm modules (backbone, necks, classification head) run in bfloat16,
  weights and activations, on oneDNN's bfloat16 convolutions (AVX512_BF16 / AMX) and, for the 3x3 stride-1 ones
  where timing shows it faster, hrnet_mm's bfloat16 Winograd kernels (:mod:`hrnet_mm.ops.winograd`, AVX512_BF16);
  their float32 inputs are cast on the way in and their outputs back to float32 on the way out. The other
  convolutions of a whole model (the peers' heads) run in bfloat16 the same way, one by one. Refused on a
  processor without native bfloat16 (:func:`hrnet_mm.deploy.runtimes.native_bf16`), where oneDNN would emulate it
  slower than float32.
* ``'int8'`` (:func:`to_int8`): static post-training quantization. Every convolution gets int8 weights, symmetric
  per output channel (7 bits on an x86 processor without VNNI or AMX: :class:`Int8Conv2d`), and quantizes its
  input to uint8 with one scale and zero point per layer, calibrated on the inputs the caller gives (the range
  each layer's input took over them). oneDNN's int8 convolution (VNNI / AMX) accumulates in int32, adds the
  float32 bias, the residual or multi-resolution sum and the ReLU, and writes float32, so upsampling and the sums
  outside the convolutions stay exact; a convolution whose result only the next one reads writes it as uint8 on
  that one's grid instead (:meth:`Int8Conv2d.quantize_output`), and a result that several read on one grid is
  quantized once for all of them (:class:`QuantizeU8`).

Convolutions that could not be fused (a forward that ``torch.fx`` cannot trace) are converted one by one, without
the fused ReLU and sum. Layers that neither form handles (linear layers, transposed convolutions, mmcv's
deformable convolutions) stay float32: :func:`to_deploy` names them in a warning. A convolution that the
calibration inputs never reached is an error.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from hrnet_mm.ops import onednn as onednn_ops
from hrnet_mm.ops import winograd as winograd_ops

from .fold import OneDNNConv2d, PackedWeights
from .fold import _is_ours as _is_hrnet_mm
from .fold import copy_plain_attributes, onednn_available, signature
from .runtimes import native_bf16, native_int8

PRECISIONS = ('fp32', 'bf16', 'int8')
_ALIASES = {'fp32': 'fp32', 'float32': 'fp32', 'f32': 'fp32', 'bf16': 'bf16', 'bfloat16': 'bf16', 'int8': 'int8'}


class PrecisionError(ValueError):
    """A reduced-precision deploy model that cannot be made as asked (the message names the fix)."""


def canonical_precision(precision: str) -> str:
    """'fp32', 'bf16' or 'int8' for ``precision`` or one of its spellings ('float32', 'bfloat16', ...)."""
    name = _ALIASES.get(str(precision).lower())
    if name is None:
        raise PrecisionError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    return name


def check_precision(precision: str, calibration: Optional[Iterable[Any]], devices: Iterable[torch.device]) -> str:
    """The canonical name of ``precision`` ('fp32', 'bf16' or 'int8'), or :class:`PrecisionError` when the model
    (on ``devices``), the processor or the arguments cannot give it."""
    name = canonical_precision(precision)
    if name == 'fp32':
        if calibration is not None:
            raise PrecisionError("calibration data is for precision='int8' only")
        return name
    cpu = all(d.type == 'cpu' for d in devices)
    if not cpu and name == 'int8':
        raise PrecisionError("precision='int8' runs on the CPU: move the model to the CPU first")
    if cpu and not onednn_available():
        raise PrecisionError(f"precision={name!r} needs torch's oneDNN (mkldnn) CPU kernels, which this torch lacks "
                             'or has disabled')
    if name == 'bf16':
        if calibration is not None:
            raise PrecisionError("calibration data is for precision='int8' only")
        if cpu and not native_bf16():
            raise PrecisionError("precision='bf16' needs a processor with native bfloat16 (AVX512_BF16 or AMX); "
                                 "this one has neither and would emulate it slower than float32: use "
                                 "precision='fp32'")
        return name
    if calibration is None:
        raise PrecisionError("precision='int8' needs calibration data: pass calibration=[input, ...], a few dozen "
                             'inputs like those the model will see (they set the range of every layer)')
    if not hasattr(torch.ops.onednn, 'qconv2d_pointwise'):
        raise PrecisionError("precision='int8' needs torch's oneDNN int8 convolutions (torch.ops.onednn."
                             'qconv2d_pointwise), which this torch lacks')
    return name


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    """``obj`` with every floating-point tensor in it (lists, tuples and dicts included) cast to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, (list, tuple)):
        items = [_cast(o, dtype) for o in obj]
        return type(obj)(items) if not hasattr(obj, '_fields') else type(obj)(*items)
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


class Bfloat16Module(nn.Module):
    """Runs ``module`` (converted to bfloat16) on float32 inputs: floating-point tensor arguments are cast to
    bfloat16 on the way in, floating-point tensor outputs back to float32 on the way out (same shapes and memory
    formats), so the rest of a whole model keeps working in float32. Public attributes of plain types
    (``out_channels``, ...) are copied from ``module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.to(torch.bfloat16)
        copy_plain_attributes(module, self)

    def forward(self, *args, **kwargs):
        return _cast(self.module(*_cast(args, torch.bfloat16), **_cast(kwargs, torch.bfloat16)), torch.float32)


class Int8Conv2d(PackedWeights, nn.Module):
    """``relu?(conv(x) [+ other])`` with int8 weights and uint8 activations, on oneDNN's int8 convolution.

    ``x`` (float32, (N, C, H, W), channels_last for full speed) is quantized as ``q = clamp(round(x / x_scale) +
    x_zero_point, 0, 255)`` (:func:`quantize_u8`); the weight ``w`` (K, C/groups, kh, kw) is stored as
    ``round(w / w_scale[k])`` in int8 with ``w_scale[k] = max |w[k]| / w_max``: ``w_max`` is 127, or 63 on an x86
    processor without an int8 dot-product instruction (:func:`~hrnet_mm.deploy.runtimes.native_int8`), where
    oneDNN adds pairs of products in int16 and larger weights would saturate them. The product accumulates in
    int32 and is written in float32 with the float32 bias, the optional summand ``other`` (float32, (N, K, H',
    W')) and ReLU.

    Args:
        conv: The float32 convolution (a :class:`OneDNNConv2d`, whose fused ReLU and sum are kept, or an
            ``nn.Conv2d`` with zero padding).
        low, high: The range of ``x`` seen in calibration; the uint8 grid spans it, extended to include 0.

    A convolution whose result only the next one reads may write it already quantized for that one
    (:meth:`quantize_output`): uint8 on the next one's grid, which then takes it as it is. This saves a float32
    result and a quantization pass.
    """

    _CACHES = ('_packed', '_plans')

    def __init__(self, conv: nn.Module, low: float, high: float) -> None:
        super().__init__()
        fused = isinstance(conv, OneDNNConv2d)
        weight = conv.weight.detach().float()
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu, self.add = (conv.relu, conv.add) if fused else (False, False)
        self.inplace = conv.inplace if fused else False
        self.keep_format = not fused  # a plain convolution answers in its input's memory format, as F.conv2d does
        self.out_channels = weight.shape[0]
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        scale = (high - low) / 255 if high > low else 1.0
        self.x_scale = scale
        self.x_zero_point = int(min(max(round(-low / scale), 0), 255))
        self.w_max = int8_weight_max()
        w_scale = weight.abs().amax(dim=(1, 2, 3)) / self.w_max
        w_scale = torch.where(w_scale > 0, w_scale, torch.ones_like(w_scale))
        qweight = torch.round(weight / w_scale.view(-1, 1, 1, 1)).clamp(-self.w_max, self.w_max).to(torch.int8)
        self.register_buffer('qweight', qweight.contiguous(memory_format=torch.channels_last))
        self.register_buffer('w_scale', w_scale.to(torch.float32))
        self.register_buffer('w_zero_point', torch.zeros(weight.shape[0], dtype=torch.int64))
        bias = conv.bias.detach().float() if conv.bias is not None else None
        self.register_buffer('bias', bias)
        self.out_scale: Optional[float] = None  # set by quantize_output: the result is uint8 on this grid
        self.out_zero_point = 0
        self._packed: Dict[torch.Size, torch.Tensor] = {}
        self._plans: Dict[tuple, Any] = {}  # signature(x) -> the call that runs it (_plan)

    def quantize_output(self, scale: float, zero_point: int) -> None:
        """From now on, return the result as uint8 ``clamp(round_half_even(y / scale) + zero_point, 0, 255)``
        (the input grid of the convolution that reads it) instead of float32 ``y``. Only without a summand."""
        if self.add:
            raise ValueError('Int8Conv2d.quantize_output: a convolution with a summand answers in float32')
        self.out_scale, self.out_zero_point = float(scale), int(zero_point)
        self._clear_caches()

    def extra_repr(self) -> str:
        return (f'{self.qweight.shape[1] * self.groups}, {self.out_channels}, '
                f'kernel_size={tuple(self.qweight.shape[2:])}, stride={tuple(self.stride)}, relu={self.relu}, '
                f'add={self.add}, x_scale={self.x_scale:.4g}, x_zero_point={self.x_zero_point}, w_max={self.w_max}'
                + (f', out_scale={self.out_scale:.4g}, out_zero_point={self.out_zero_point}'
                   if self.out_scale is not None else ''))

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        return self._cached(self._packed, x.shape, lambda: torch.ops.onednn.qconv_prepack(
            self.qweight, self.w_scale, self.x_scale, self.x_zero_point, self.stride, self.padding, self.dilation,
            self.groups, list(x.shape)))

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._cached(self._plans, self._plan_key(x, other), lambda: self._plan(x))(x, other)

    def _plan_key(self, x: torch.Tensor, other: Optional[torch.Tensor]) -> tuple:
        return signature(x)  # the summand is only added: the plan depends on x alone

    def _plan(self, x: torch.Tensor):
        """The call ``run(x, other)`` for inputs of ``x``'s :func:`~hrnet_mm.deploy.fold.signature`, made once
        with the packed weight, the quantizer and oneDNN's operators bound. A uint8 ``x`` is taken as already
        quantized on this layer's grid (the previous layer's :meth:`quantize_output`)."""
        if x.dtype not in (torch.float32, torch.uint8) or x.device.type != 'cpu' or x.dim() != 4:
            raise TypeError(f'Int8Conv2d takes a float32 (or uint8, quantized for it) (N, C, H, W) CPU tensor, '
                            f'got {x.dtype} {tuple(x.shape)} on {x.device}')
        if getattr(self, 'w_max', 127) > int8_weight_max():
            raise RuntimeError('this int8 model was made on a processor with an int8 dot-product instruction (VNNI '
                               'or AMX); this one has none, and its int8 convolutions would saturate on these '
                               'weights: make the int8 model again here (to_deploy(..., precision="int8"))')
        cl = torch.channels_last
        nchw = self.keep_format and not x.is_contiguous(memory_format=cl)
        quantize = _quantizer() if x.dtype == torch.float32 else _quantized  # uint8: on this layer's grid
        scale, zero_point = self.x_scale, self.x_zero_point
        out_scale, out_zero_point = self.out_scale, self.out_zero_point
        requantize = None  # the scale the float32 result of torch's operator is quantized with (quantize_output)
        if self.groups == 1 and onednn_ops.available():  # oneDNN's primitive, made once for this shape
            summand = (onednn_ops.SUMMAND_INTO if self.inplace else onednn_ops.SUMMAND_ADD) if self.add else 0
            conv = onednn_ops.conv(x.shape, self.qweight, self.bias, self.stride, self.padding, self.dilation,
                                   self.relu, summand, self.w_scale, scale, zero_point, out_scale or 0.0,
                                   out_zero_point).run
            private = False  # a summand that others read is only read; oneDNN writes a uint8 result itself
        else:  # torch's operator, which prepares oneDNN's call each time and adds a summand only by writing into it
            head = (scale, zero_point, self._packed_weight(x), self.w_scale, self.w_zero_point)
            common = (self.bias, self.stride, self.padding, self.dilation, self.groups, 1.0, 0, torch.float32)
            plain, binary = torch.ops.onednn.qconv2d_pointwise.default, torch.ops.onednn.qconv2d_pointwise.binary
            attr, unary = ('relu', 'relu') if self.relu else ('none', None)
            private = not self.inplace
            requantize = out_scale

            def conv(q: torch.Tensor, summand: Optional[torch.Tensor] = None) -> torch.Tensor:
                if summand is None:
                    return plain(q, *head, *common, attr, [], '')
                return binary(q, *head, summand, *common, 1.0, 0, 'sum', 1.0, unary, [], '')

        def run(x: torch.Tensor, other: Optional[torch.Tensor]) -> torch.Tensor:
            q = quantize(x.contiguous(memory_format=cl), scale, zero_point)
            if other is None:
                y = conv(q)
                if requantize is not None:
                    y = _quantizer()(y, requantize, out_zero_point)
                return y.contiguous() if nchw else y
            summand = other.contiguous(memory_format=cl)  # a copy unless channels_last already
            return conv(q, summand.clone() if private and summand is other else summand)
        return run


class QuantizeU8(nn.Module):
    """``x`` (float32, (N, C, H, W)) quantized once to uint8 on one grid (:func:`quantize_u8`, channels_last) for
    the several :class:`Int8Conv2d` that read it on that grid (:func:`_share_quantizations`), which then take it
    as it is instead of each quantizing it again.

    Args:
        scale, zero_point: The grid, ``x = scale * (q - zero_point)``: the readers' ``x_scale`` and
            ``x_zero_point``.
    """

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.scale, self.zero_point = float(scale), int(zero_point)

    def extra_repr(self) -> str:
        return f'scale={self.scale:.4g}, zero_point={self.zero_point}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _quantizer()(x.contiguous(memory_format=torch.channels_last), self.scale, self.zero_point)


def int8_weight_max() -> int:
    """The largest ``|q_w|`` of :class:`Int8Conv2d`'s weights on this processor: 127, or 63 where oneDNN adds pairs
    of uint8 x int8 products in int16 (no int8 dot product: :func:`~hrnet_mm.deploy.runtimes.native_int8`), since
    ``2 * 255 * 63 < 2 ** 15``."""
    return 127 if native_int8() else 63


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``clamp(round_half_even(x / scale) + zero_point, 0, 255)`` as uint8, in ``x``'s memory format (float32 CPU
    ``x``): hrnet_mm's kernel (``torch.ops.hrnet_mm.quantize_u8``, one pass) where it is built, torch's per-tensor
    quantization otherwise (the same integers)."""
    return _quantizer()(x, scale, zero_point)


def _quantized(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """The quantizer of an input that arrives quantized already (uint8, on the layer's grid): ``q`` itself."""
    return q


def _quantizer():
    """:func:`quantize_u8`'s implementation on this machine (hrnet_mm's operator, or torch's quantization)."""
    return torch.ops.hrnet_mm.quantize_u8.default if _kernel() else _torch_quantize_u8


def _torch_quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch marks its quantized tensors deprecated; the integers are the same
        q = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).int_repr()
    return q.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) and x.dim() == 4 else q


@functools.lru_cache(maxsize=None)
def _kernel() -> bool:
    return winograd_ops.available() and hasattr(torch.ops.hrnet_mm, 'quantize_u8')


def _is_ours(module: nn.Module) -> bool:
    """An hrnet_mm module, or the fused graph that replaced one."""
    return _is_hrnet_mm(module) or isinstance(module, torch.fx.GraphModule)


def _convs(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The convolutions a reduced-precision model converts: fused :class:`OneDNNConv2d` modules and the zero-padded
    2-D ``nn.Conv2d`` layers outside them, with their qualified names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, OneDNNConv2d) or _plain_conv(m)]


def _plain_conv(m: nn.Module) -> bool:
    """A zero-padded ``nn.Conv2d`` whose forward is ``F.conv2d`` (mmcv's wrapper, which only adds empty-input
    handling, included)."""
    plain = type(m) is nn.Conv2d or (isinstance(m, nn.Conv2d) and type(m).__module__ == 'mmcv.cnn.bricks.wrappers')
    return plain and m.padding_mode == 'zeros' and not isinstance(m.padding, str)


def float32_layers(model: nn.Module) -> Dict[str, int]:
    """Layers with a weight matrix or kernel (a parameter or buffer ``weight`` of two or more dimensions) that
    neither reduced-precision form converts (linear layers, transposed convolutions, mmcv's deformable
    convolutions, ...), and how many of each type the model has."""
    counts: Dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, (OneDNNConv2d, Int8Conv2d)) or _plain_conv(m):
            continue
        weight = m._parameters.get('weight', m._buffers.get('weight'))
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition('.')
    setattr(model.get_submodule(parent) if parent else model, child, new)


def to_bfloat16(model: nn.Module) -> nn.Module:
    """The fused deploy ``model`` with its hrnet_mm modules and the other convolutions in bfloat16 (each wrapped
    in :class:`Bfloat16Module`); changed in place and returned."""
    if _is_ours(model):
        return Bfloat16Module(model)

    def walk(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if _is_ours(child) or _plain_conv(child):
                setattr(module, name, Bfloat16Module(child))
            else:
                walk(child)

    walk(model)
    return model


def _inputs(item: Any) -> Tuple[tuple, dict]:
    if isinstance(item, dict):
        return (), item
    if isinstance(item, (list, tuple)):
        return tuple(item), {}
    return (item,), {}


@torch.no_grad()
def calibrate(model: nn.Module, calibration: Iterable[Any]) -> Dict[str, Tuple[float, float]]:
    """Runs ``model`` on each calibration item (a tensor: ``model(x)``; a tuple: ``model(*item)``; a dict:
    ``model(**item)``) and returns the (min, max) that each convolution's input took, by qualified name."""
    convs = _convs(model)
    ranges: Dict[str, Tuple[float, float]] = {}

    def hook(name: str):
        def record(_: nn.Module, args: tuple) -> None:
            x = args[0]
            low, high = float(x.min()), float(x.max())
            old = ranges.get(name)
            ranges[name] = (low, high) if old is None else (min(old[0], low), max(old[1], high))
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in convs]
    count = 0
    try:
        for item in calibration:
            args, kwargs = _inputs(item)
            model(*args, **kwargs)
            count += 1
    finally:
        for h in handles:
            h.remove()
    if count == 0:
        raise PrecisionError("precision='int8': the calibration data is empty; pass a few dozen inputs like those "
                             'the model will see')
    missed = [name for name, _ in convs if name not in ranges]
    if missed:
        raise PrecisionError(f"precision='int8': the calibration inputs never reached {len(missed)} convolutions "
                             f'(first: {missed[0]}); give inputs that run the whole model')
    return ranges


def to_int8(model: nn.Module, calibration: Iterable[Any]) -> nn.Module:
    """The fused float32 deploy ``model`` with every convolution replaced by an :class:`Int8Conv2d` calibrated on
    ``calibration`` (see :func:`calibrate`); changed in place and returned."""
    ranges = calibrate(model, calibration)
    last_uses = _last_uses(model)
    for name, conv in _convs(model):
        new = Int8Conv2d(conv, *ranges[name])
        new.inplace = new.inplace or name in last_uses
        if name:
            _replace(model, name, new)
        else:
            return new
    _quantize_outputs(model)
    _share_quantizations(model)
    return model


def _quantize_outputs(model: nn.Module) -> None:
    """In every fused graph of ``model``, each :class:`Int8Conv2d` without a summand whose result only another
    one reads, as its input, writes that result quantized for it (:meth:`Int8Conv2d.quantize_output`): in HRNet
    the first convolution of every residual block."""
    for gm in model.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        calls: Dict[str, int] = {}
        for node in gm.graph.nodes:
            if node.op == 'call_module':
                calls[node.target] = calls.get(node.target, 0) + 1
        for node in gm.graph.nodes:
            users = list(node.users)
            if node.op != 'call_module' or calls[node.target] != 1 or len(users) != 1:
                continue
            reader = users[0]
            conv = gm.get_submodule(node.target)
            if (reader.op != 'call_module' or calls[reader.target] != 1 or not isinstance(conv, Int8Conv2d)
                    or conv.add or conv.groups != 1 or not _reads_as_input(reader, node)):
                continue
            nxt = gm.get_submodule(reader.target)
            if isinstance(nxt, Int8Conv2d) and nxt.groups == 1 and not nxt.keep_format:
                conv.quantize_output(nxt.x_scale, nxt.x_zero_point)


def _reads_as_input(reader: torch.fx.Node, node: torch.fx.Node) -> bool:
    """Whether ``reader`` reads ``node`` as its first argument and nowhere else."""
    return (bool(reader.args) and reader.args[0] is node and node not in reader.args[1:]
            and node not in reader.kwargs.values())


def _share_quantizations(model: nn.Module) -> None:
    """In every fused graph of ``model``, a float32 result that several :class:`Int8Conv2d` read as their input on
    one grid (the same calibrated range: in HRNet each branch's output, which every other branch's fuse
    convolution reads) is quantized once, by a :class:`QuantizeU8` placed just before the first of them (so its
    uint8 result is still in cache for that one), and they all read that result."""
    for gm in model.modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        changed = False
        order = {node: i for i, node in enumerate(gm.graph.nodes)}
        for node in list(gm.graph.nodes):
            grids: Dict[Tuple[float, int], List[torch.fx.Node]] = {}
            for reader in node.users:
                if reader.op != 'call_module' or not _reads_as_input(reader, node):
                    continue
                conv = gm.get_submodule(reader.target)
                if isinstance(conv, Int8Conv2d) and conv.groups == 1 and not conv.keep_format:
                    grids.setdefault((conv.x_scale, conv.x_zero_point), []).append(reader)
            for (scale, zero_point), readers in grids.items():
                if len(readers) < 2:
                    continue
                name = f'quantize_{node.name}'
                while hasattr(gm, name):
                    name += '_'
                gm.add_submodule(name, QuantizeU8(scale, zero_point))
                with gm.graph.inserting_before(min(readers, key=order.get)):  # hot in cache for the first one
                    quantized = gm.graph.call_module(name, (node,))
                for reader in readers:
                    reader.replace_input_with(node, quantized)
                changed = True
        if changed:
            gm.graph.lint()
            gm.recompile()


def _last_uses(model: nn.Module) -> set:
    """Qualified names of the fused convolutions with a summand that nothing reads afterwards, so that the sum may
    be written into it (oneDNN's int8 convolution adds a summand only in place): the summand is a fresh result (of
    a convolution, a sum or an upsampling), every reader of it is one of those too (no views), and this
    convolution is its last reader."""
    from .fold import _owns_result
    found = set()
    for prefix, gm in model.named_modules():
        if not isinstance(gm, torch.fx.GraphModule):
            continue
        order = {node: i for i, node in enumerate(gm.graph.nodes)}
        for node in gm.graph.nodes:
            if node.op != 'call_module' or len(node.args) != 2:
                continue
            if not isinstance(gm.get_submodule(node.target), OneDNNConv2d):
                continue
            other = node.args[1]
            if not isinstance(other, torch.fx.Node) or not _owns_result(gm, other):
                continue
            readers = list(other.users)
            if all(_owns_result(gm, r) for r in readers) and max(order[r] for r in readers) == order[node]:
                found.add(f'{prefix}.{node.target}' if prefix else node.target)
    return found


def warn_float32_layers(model: nn.Module, precision: str) -> None:
    """Warns, naming them, about the layers with weights that stay float32 in a ``precision`` model."""
    counts = float32_layers(model)
    if counts:
        listed = ', '.join(f'{n} x{c}' for n, c in sorted(counts.items()))
        warnings.warn(f'to_deploy(precision={precision!r}): these layers stay float32: {listed}', stacklevel=3)
