"""Inference-only HRNet: the same function, prepared to run faster.

:func:`to_deploy` returns a copy of a model (any module tree containing hrnet_mm modules, or a whole
mmdet/mmseg/mmpose/mmpretrain model) in eval mode with every convolution+batch-norm pair folded into one
convolution, in ``channels_last`` memory format and, on CPU, with the hrnet_mm modules' graphs rewritten to
oneDNN convolutions whose weights are packed once (per input shape) and which fuse the ReLU and the residual
or multi-resolution sum that follows them (:func:`fuse_onednn`). Each 3x3 stride-1 convolution among them runs
as a Winograd convolution (:mod:`hrnet_mm.ops.winograd`, 2.25x or 4x fewer multiplications) for the input shapes
where timing shows that faster. ``compile=True`` compiles it with ``torch.compile`` (inductor with weight
freezing). Outputs equal the original's within float32 rounding (the folding, the fused sums and Winograd's
transforms change the order of operations; about 1e-6 to 1e-5 of the outputs' largest value).

On CPU, :func:`to_deploy` also calls :func:`tune_cpu_allocator` (glibc only; ``tune_allocator=False`` leaves the
allocator alone): by default glibc may hand the large activation buffers of every forward back to the operating
system and take them again, page by page, on the next one (up to 61,000 page faults per W18 512x1024 deploy
forward, which then takes 1.24x as long; docs/deployment.md).
"""
from __future__ import annotations

import copy
import ctypes
import functools
import operator
import platform
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from hrnet_mm.ops import hugepages
from hrnet_mm.ops import onednn as onednn_ops
from hrnet_mm.ops import winograd as winograd_ops
from hrnet_mm.ops.convert import revert_cpu_kernels


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: _BatchNorm) -> nn.Conv2d:
    """Returns a conv equal to ``bn(conv(x))`` in eval mode (running statistics)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale if bn.affine else -bn.running_mean * scale
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode).to(conv.weight)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bias * scale + shift)
    return fused


def _pairs(module: nn.Module) -> Tuple[Tuple[str, str], ...]:
    """Names of (conv, norm) attribute pairs inside ``module`` that run back to back."""
    names = dict(module.named_children())
    pairs = []
    for conv_name, norm_name in (('conv1', 'bn1'), ('conv2', 'bn2'), ('conv3', 'bn3'), ('conv', 'bn')):
        if isinstance(names.get(conv_name), nn.Conv2d) and isinstance(names.get(norm_name), _BatchNorm):
            pairs.append((conv_name, norm_name))
    if isinstance(module, nn.Sequential):
        keys = list(names)
        for a, b in zip(keys, keys[1:]):
            if isinstance(names[a], nn.Conv2d) and isinstance(names[b], _BatchNorm):
                pairs.append((a, b))
    return tuple(pairs)


def fold_batchnorm(model: nn.Module) -> int:
    """Folds, in place, every BN that directly follows a conv in the HRNet/mmcv layouts; returns the count.

    The BN is replaced by ``nn.Identity`` so the module structure (and the forward code) stays as it is.
    """
    count = 0
    for module in list(model.modules()):
        for conv_name, norm_name in _pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, norm_name)
            if bn.training:
                raise ValueError('fold_batchnorm needs the model in eval mode (BN uses batch statistics in train mode)')
            setattr(module, conv_name, fold_bn_into_conv(conv, bn))
            setattr(module, norm_name, nn.Identity())
            count += 1
    return count


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_ALLOCATOR_TUNED: Optional[Tuple[int, int]] = None


def tune_cpu_allocator(mmap_threshold_mb: int = 64, trim_threshold_mb: int = 256) -> bool:
    """Makes glibc's ``malloc`` keep freed memory for reuse instead of returning it to the operating system.

    Process-wide (every later allocation of every library in this process): blocks below ``mmap_threshold_mb``
    come from the heap instead of a fresh ``mmap`` each time, and up to ``trim_threshold_mb`` of free memory at the
    top of the heap stays mapped. Repeated forwards then reuse the same pages instead of faulting them in again,
    which makes CPU inference of any HRNet (the peers' too) faster: eager W18 512x1024 830 -> 576 ms, its deploy
    model 373 -> 301 ms on the 2-core development machine. The price is that the process keeps up to
    ``trim_threshold_mb`` of freed memory. The same effect as preloading jemalloc or tcmalloc, which Intel
    recommends for PyTorch on CPU; with those preloaded this call changes nothing.

    Returns:
        Whether the setting was applied (False on a C library other than glibc, or when ``mallopt`` refuses).
    """
    global _ALLOCATOR_TUNED
    wanted = (int(mmap_threshold_mb), int(trim_threshold_mb))
    if _ALLOCATOR_TUNED == wanted:
        return True
    if wanted[0] <= 0 or wanted[1] < wanted[0]:
        raise ValueError(f'tune_cpu_allocator: need 0 < mmap_threshold_mb <= trim_threshold_mb, got {wanted}')
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, wanted[0] << 20) and mallopt(_M_TRIM_THRESHOLD, wanted[1] << 20)):
        return False
    _ALLOCATOR_TUNED = wanted
    return True


def allocator_tuned() -> bool:
    """Whether :func:`tune_cpu_allocator` has been applied in this process."""
    return _ALLOCATOR_TUNED is not None


@functools.lru_cache(maxsize=None)
def _onednn_ops() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_convolution_pointwise')
            and hasattr(torch.ops.mkldnn, '_reorder_convolution_weight'))


def onednn_available() -> bool:
    """Whether this torch has the oneDNN (mkldnn) fused convolution ops used by :class:`OneDNNConv2d`, and they
    are enabled (``torch.backends.mkldnn.flags(enabled=False)`` turns them off)."""
    return _onednn_ops() and torch._C._get_mkldnn_enabled()


class PackedWeights:
    """Mixin for modules that keep weights prepared for their input shapes (opaque oneDNN tensors, transformed
    weights) in dict attributes named by ``_CACHES``. A deep copy starts with them empty and ``.to()`` /
    ``.half()`` / ... empties them, so a copy or a converted module packs its own weights on its next call."""

    _CACHES: Tuple[str, ...] = ('_packed',)
    CACHE_LIMIT = 8  # input shapes kept per cache; the oldest is dropped for a new one

    def _clear_caches(self) -> None:
        for name in self._CACHES:
            setattr(self, name, {})

    def __deepcopy__(self, memo):
        new = copy.copy(self)
        memo[id(self)] = new
        new.__dict__ = {k: copy.deepcopy(v, memo) for k, v in self.__dict__.items() if k not in self._CACHES}
        new._clear_caches()
        return new

    def __getstate__(self):  # pickling (torch.save of the whole module): without the caches, which hold opaque
        state = self.__dict__.copy()  # oneDNN tensors and closures that cannot be saved
        state.update({name: {} for name in self._CACHES})
        return state

    def _apply(self, fn, *args, **kwargs):
        self._clear_caches()
        return super()._apply(fn, *args, **kwargs)

    def plan_of(self, x: torch.Tensor, other: Optional[torch.Tensor] = None):
        """The call that ``forward`` made for inputs like these (``_plans[_plan_key(x, other)]``), or None (none
        made yet); for modules that keep such calls."""
        return self._plans.get(self._plan_key(x, other))

    def _cached(self, cache: Dict[Any, Any], key: Any, make, limit: Optional[int] = None) -> Any:
        """``cache[key]``, made by ``make()`` on a miss (dropping the oldest entry when the cache is full)."""
        value = cache.get(key)
        if value is None:
            if len(cache) >= (limit or self.CACHE_LIMIT):
                cache.pop(next(iter(cache)))
            value = cache[key] = make()
        return value


def _winograd_dtype(dtype: torch.dtype) -> bool:
    """Whether a Winograd kernel runs on inputs of ``dtype`` here: float32, or bfloat16 where
    :func:`hrnet_mm.ops.winograd.bf16_available`."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and winograd_ops.bf16_available())


def signature(x: torch.Tensor, other: Optional[torch.Tensor] = None) -> tuple:
    """What decides how a prepared convolution runs on ``x`` (and the summand ``other``): shapes, dtypes, device,
    memory formats, and whether oneDNN is enabled (``torch.backends.mkldnn.flags``)."""
    cl = torch.channels_last
    head = (x.shape, x.dtype, x.device, x.is_contiguous(memory_format=cl), torch._C._get_mkldnn_enabled())
    return head if other is None else head + (other.shape, other.dtype, other.is_contiguous(memory_format=cl))


class OneDNNConv2d(PackedWeights, nn.Module):
    """``relu?(conv(x) [+ other])`` as one oneDNN call with the weight packed once per input shape.

    The same ops that inductor's weight freezing emits, called eagerly. On other devices or dtypes, or when
    oneDNN is missing, it runs the plain ``F.conv2d`` (+ add) (+ relu) with identical results.

    Args:
        conv: A zero-padded ``nn.Conv2d`` (its weight and bias are copied).
        relu: Apply a ReLU to the result.
        add: ``forward`` takes a second tensor that is added to the convolution before the ReLU.
        inplace: Write the result into that second tensor (only when nothing else reads it).
        winograd: For a 3x3 stride-1 convolution, also consider the Winograd kernels (:mod:`hrnet_mm.ops.winograd`;
            channels_last CPU inputs, float32, or bfloat16 where the processor has AVX512_BF16): the fastest of
            oneDNN, F(2x2, 3x3) and F(4x4, 3x3) is timed once per input shape and type and used from then on.
    """

    _CACHES = ('_packed', '_winograd', '_winograd_u', '_plans')

    def __init__(self, conv: nn.Conv2d, relu: bool = False, add: bool = False, inplace: bool = False,
                 winograd: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False) if conv.bias is not None else None
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu, self.add, self.inplace = relu, add, inplace
        geometry = (tuple(self.weight.shape[2:]), self.stride, self.padding, self.dilation, self.groups)
        self.winograd = bool(winograd) and geometry == ((3, 3), [1, 1], [1, 1], [1, 1], 1)
        self._packed: Dict[torch.Size, Tuple[torch.Tensor, torch.Size]] = {}
        self._winograd: Dict[tuple, int] = {}  # (input shape, dtype) -> 0 (oneDNN) or the Winograd tile
        self._winograd_u: Dict[tuple, torch.Tensor] = {}  # (tile, dtype) -> transformed weight
        self._plans: Dict[tuple, Any] = {}  # signature(x, other) -> the call that runs them (_plan)

    def extra_repr(self) -> str:
        cin, cout = self.weight.shape[1] * self.groups, self.weight.shape[0]
        return (f'{cin}, {cout}, kernel_size={tuple(self.weight.shape[2:])}, stride={tuple(self.stride)}, '
                f'relu={self.relu}, add={self.add}, inplace={self.inplace}, winograd={self.winograd}')

    def _fusable(self, x: torch.Tensor, other: Optional[torch.Tensor]) -> bool:
        """Whether the fused kernels (oneDNN; Winograd for float32) can run on these inputs: float32 or bfloat16
        (the weight's dtype) CPU tensors, channels that match the weight and a summand of the output's shape.
        Otherwise the plain ops run (and raise torch's own errors for a wrong input). Inputs that need a gradient
        never get here: :meth:`forward` sends them to the plain ops first."""
        if not (x.dtype in (torch.float32, torch.bfloat16) and x.dtype == self.weight.dtype and x.device.type == 'cpu'
                and x.dim() == 4 and self.weight.device.type == 'cpu' and onednn_available()):
            return False
        return x.shape[1] == self.weight.shape[1] * self.groups and (
            other is None or (other.dtype == x.dtype and other.shape == self._out_shape(x)))

    def _direct(self, x: torch.Tensor, other: Optional[torch.Tensor]) -> bool:
        """Whether :mod:`hrnet_mm.ops.onednn` runs this convolution on these inputs (channels_last, no groups)."""
        cl = torch.channels_last
        return (self.groups == 1 and self._fusable(x, other) and x.is_contiguous(memory_format=cl)
                and (other is None or other.is_contiguous(memory_format=cl)) and onednn_ops.available())

    def _fast_weight(self, x: torch.Tensor, other: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The packed weight when the fused oneDNN op can run on these inputs, else None."""
        return self._packed_weight(x)[0] if self._fusable(x, other) else None

    def _packed_weight(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Size]:
        """The weight packed for ``x``'s shape, and the output shape."""
        def pack() -> Tuple[torch.Tensor, torch.Size]:
            w = torch.ops.mkldnn._reorder_convolution_weight(self.weight, self.padding, self.stride, self.dilation,
                                                             self.groups, list(x.shape))
            return w, self._out_shape(x)

        return self._cached(self._packed, x.shape, pack)

    def _out_shape(self, x: torch.Tensor) -> torch.Size:
        k = self.weight.shape[2:]
        size = [(x.shape[2 + i] + 2 * self.padding[i] - self.dilation[i] * (k[i] - 1) - 1) // self.stride[i] + 1
                for i in range(2)]
        return torch.Size([x.shape[0], self.weight.shape[0], *size])

    def _winograd_weight(self, x: torch.Tensor) -> Tuple[int, Optional[torch.Tensor]]:
        """(tile, transformed weight) when a Winograd kernel is the fastest for ``x``'s shape, else (0, None).
        The choice is made once per input shape; the transformed weight once per tile (shapes share it), in
        huge pages where the system has them (:mod:`hrnet_mm.ops.hugepages`: a forward reads every such weight
        from memory)."""
        def choose() -> int:
            weight_memory = None
            if self._direct(x, None):  # timed against the oneDNN call that would run instead
                prepared = onednn_ops.conv(x.shape, self.weight, self.bias, self.stride, self.padding,
                                           self.dilation, False)
                onednn, weight_memory = prepared.run, prepared.weight_memory
            else:
                args = (self.padding, self.stride, self.dilation, self.groups)
                w = self._packed_weight(x)[0]

                def onednn(data: torch.Tensor) -> torch.Tensor:
                    return torch.ops.mkldnn._convolution_pointwise(data, w, self.bias, *args, 'none', [], '')

            tile = winograd_ops.choose_algorithm(x, self.weight, onednn, weight_memory)
            if tile:
                self._packed.pop(x.shape, None)  # the Winograd weight replaces the oneDNN one for this shape
            return tile

        tile = self._cached(self._winograd, (x.shape, x.dtype), choose, limit=64)
        if not tile:
            return 0, None
        return tile, self._cached(self._winograd_u, (tile, x.dtype), lambda: hugepages.weight_copy(
            winograd_ops.prepare_weight(self.weight, tile, x.dtype)))

    def forward(self, x: torch.Tensor, other: Optional[torch.Tensor] = None) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad
                                        or (other is not None and other.requires_grad)):
            return self._plain(x, other)  # the fused ops have no backward
        return self._cached(self._plans, self._plan_key(x, other), lambda: self._plan(x, other))(x, other)

    def _plan_key(self, x: torch.Tensor, other: Optional[torch.Tensor]) -> tuple:
        return signature(x, other)

    def _plain(self, x: torch.Tensor, other: Optional[torch.Tensor]) -> torch.Tensor:
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if other is not None:
            y = y + other
        return F.relu(y) if self.relu else y

    def _plan(self, x: torch.Tensor, other: Optional[torch.Tensor]):
        """The call ``run(x, other)`` for inputs of this :func:`signature`, made once per signature with everything
        it needs bound (the per-call work is then the kernel's own): a Winograd kernel, oneDNN's fused
        convolution (prepared by :mod:`hrnet_mm.ops.onednn` where it is built, else torch's operator), or the plain
        ops."""
        cl = torch.channels_last
        relu, bias, out_channels = self.relu, self.bias, self.weight.shape[0]
        if (self.winograd and _winograd_dtype(x.dtype) and x.is_contiguous(memory_format=cl)
                and self._fusable(x, other) and (other is None or other.is_contiguous(memory_format=cl))):
            tile, u = self._winograd_weight(x)
            b32 = None if bias is None else bias.float()  # the kernel adds a float32 bias
            if tile and other is not None and self.inplace:
                add_ = winograd_ops.kernel(inplace=True)

                def winograd_into_other(x, other):
                    add_(x, u, out_channels, b32, other, relu, tile)
                    return other
                return winograd_into_other
            if tile:
                conv = winograd_ops.kernel()
                return lambda x, other: conv(x, u, out_channels, b32, other, relu, tile)
        if self._direct(x, other):  # oneDNN's primitive, made once for this shape (hrnet_mm.ops.onednn)
            summand = (onednn_ops.SUMMAND_NONE if other is None else
                       onednn_ops.SUMMAND_INTO if self.inplace else onednn_ops.SUMMAND_ADD)
            run = onednn_ops.conv(x.shape, self.weight, bias, self.stride, self.padding, self.dilation, relu,
                                  summand).run
            return (lambda x, other: run(x)) if other is None else run
        w = self._fast_weight(x, other)
        if w is None:
            return self._plain
        args = (self.padding, self.stride, self.dilation, self.groups)
        if other is None:
            conv = torch.ops.mkldnn._convolution_pointwise.default
            attr = 'relu' if relu else 'none'
            return lambda x, other: conv(x, w, bias, *args, attr, [], '')
        unary = 'relu' if relu else None
        if self.inplace and other.is_contiguous(memory_format=cl) == x.is_contiguous(memory_format=cl):
            conv_ = torch.ops.mkldnn._convolution_pointwise_.binary
            return lambda x, other: conv_(other, x, w, bias, *args, 'add', 1.0, unary, [], '')
        conv = torch.ops.mkldnn._convolution_pointwise.binary
        return lambda x, other: conv(x, other, w, bias, *args, 'add', 1.0, unary, [], '')


_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


def _is_relu(gm: 'torch.fx.GraphModule', node: 'torch.fx.Node') -> bool:
    if node.op == 'call_module':
        return type(gm.get_submodule(node.target)) is nn.ReLU
    if node.op == 'call_method':
        return node.target in ('relu', 'relu_') and len(node.args) == 1 and not node.kwargs
    return node.op == 'call_function' and node.target in _RELU_FUNCTIONS and len(node.args) == 1 and (
        not node.kwargs or set(node.kwargs) == {'inplace'})


def _is_add(node: 'torch.fx.Node') -> bool:
    import torch.fx as fx
    return (node.op == 'call_function' and node.target in _ADD_FUNCTIONS and len(node.args) == 2 and not node.kwargs
            and all(isinstance(a, fx.Node) for a in node.args))


def _owns_result(gm: 'torch.fx.GraphModule', node: 'torch.fx.Node') -> bool:
    """Whether ``node`` returns a fresh tensor (not an input, a view or a list element), so it may be overwritten."""
    if node.op == 'call_module':
        return isinstance(gm.get_submodule(node.target), OneDNNConv2d)
    from .upsample_add import upsample_add
    return node.op == 'call_function' and node.target in (operator.add, torch.add, F.interpolate, upsample_add)


def fuse_onednn(module: nn.Module, inplace_add: bool = True, winograd: bool = False) -> 'torch.fx.GraphModule':
    """Traces ``module`` with ``torch.fx`` and replaces every ``Conv2d`` [-> add] [-> ReLU] by one
    :class:`OneDNNConv2d`, and every sum with a nearest upsampling [-> ReLU] by one
    :func:`hrnet_mm.deploy.upsample_add.upsample_add`; ``nn.Identity`` (folded BN) disappears. Fold the BNs first
    (:func:`fold_batchnorm`).
    The result is a :class:`hrnet_mm.deploy.replay.PlannedGraphModule`: repeated calls on inputs of one shape
    call the convolutions' prepared kernels directly.
    ``winograd`` lets the 3x3 stride-1 convolutions use the Winograd kernels where they are faster.

    Public attributes of plain types (``out_channels``, ...) are copied to the returned module. Raises whatever
    ``torch.fx.symbolic_trace`` raises when the forward cannot be traced.
    """
    import torch.fx as fx
    gm = fx.symbolic_trace(module)
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == 'call_module' and type(gm.get_submodule(node.target)) is nn.Identity:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    count = 0
    for node in list(graph.nodes):
        if node.op != 'call_module' or type(gm.get_submodule(node.target)) is not nn.Conv2d:
            continue
        conv = gm.get_submodule(node.target)
        if conv.padding_mode != 'zeros' or isinstance(conv.padding, str) or len(node.args) != 1 or node.kwargs:
            continue
        last, other, inplace = node, None, False
        if len(node.users) == 1 and _is_add(next(iter(node.users))):
            add = next(iter(node.users))
            if add.args[0] is not add.args[1]:
                other = add.args[1] if add.args[0] is node else add.args[0]
                last = add
                inplace = inplace_add and _owns_result(gm, other) and len(other.users) == 1
        relu = len(last.users) == 1 and _is_relu(gm, next(iter(last.users)))
        if relu:
            last = next(iter(last.users))
        name = f'onednn_conv{count}'
        count += 1
        fused = OneDNNConv2d(conv, relu=relu, add=other is not None, inplace=inplace, winograd=winograd)
        gm.add_submodule(name, fused)
        with graph.inserting_before(last):
            new = graph.call_module(name, (node.args[0],) if other is None else (node.args[0], other))
        last.replace_all_uses_with(new)
        graph.eliminate_dead_code()
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    from .upsample_add import fuse_upsample_add
    fuse_upsample_add(gm, inplace=inplace_add)
    from .replay import PlannedGraphModule
    planned = PlannedGraphModule(gm, graph)
    copy_plain_attributes(module, planned)
    return planned


def copy_plain_attributes(source: nn.Module, target: nn.Module) -> None:
    """Copies ``source``'s public attributes of plain types (``out_channels``, ...) to the module that replaces
    it, so code that reads them keeps working."""
    for key, value in vars(source).items():
        if not key.startswith('_') and key != 'training' and isinstance(value, (bool, int, float, str, tuple, list)):
            setattr(target, key, copy.deepcopy(value))


def _is_ours(module: nn.Module) -> bool:
    return type(module).__module__.startswith('hrnet_mm.')


def _fuse_ours(model: nn.Module, winograd: bool = False) -> nn.Module:
    """Applies :func:`fuse_onednn` to the outermost hrnet_mm modules (backbone, necks) inside ``model``."""
    if _is_ours(model):
        try:
            return fuse_onednn(model, winograd=winograd)
        except Exception:  # noqa: BLE001 - an untraceable forward keeps its eager form (BN still folded)
            pass
    for name, child in list(model.named_children()):
        new = _fuse_ours(child, winograd)
        if new is not child:
            setattr(model, name, new)
    return model


def _outermost_ours(model: nn.Module) -> list:
    """(parent, attribute name) of each outermost hrnet_mm module in ``model``; ``[(None, '')]`` when ``model``
    is one."""
    if _is_ours(model):
        return [(None, '')]
    found = []
    for name, child in model.named_children():
        found += [(model, name)] if _is_ours(child) else [
            (p, n) for p, n in _outermost_ours(child) if p is not None]
    return found


def _is_task_model(model: nn.Module) -> bool:
    """Whether ``model`` is a whole mmdet/mmseg/mmpose/mmpretrain model (an mmengine ``BaseModel``)."""
    try:
        from mmengine.model import BaseModel
    except ImportError:
        return False
    return isinstance(model, BaseModel) and not _is_ours(model)


def _contiguous(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.contiguous()
    if isinstance(obj, (list, tuple)) and not hasattr(obj, '_fields'):
        return type(obj)(_contiguous(o) for o in obj)
    return obj


def _contiguous_outputs(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: ``output``'s tensors in the contiguous (NCHW) layout."""
    return _contiguous(output)


class CompiledDeploy(nn.Module):
    """Holds the deploy module and its ``torch.compile``d version; calls run under ``no_grad`` (inductor's weight
    freezing needs it). ``module`` is the uncompiled model."""

    def __init__(self, module: nn.Module, options: Optional[Dict[str, Any]] = None, dynamic: Optional[bool] = None
                 ) -> None:
        super().__init__()
        self.module = module
        self.options = dict(options or {})
        self._compiled = torch.compile(module, options=self.options, dynamic=dynamic)

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self._compiled(*args, **kwargs)


def to_deploy(model: nn.Module, channels_last: bool = True, compile: bool = False, inplace: bool = False,
              fuse: Optional[bool] = None, freezing: bool = True, compile_options: Optional[Dict[str, Any]] = None,
              tune_allocator: bool = True, winograd: Optional[bool] = None, precision: str = 'fp32',
              calibration: Optional[Iterable[Any]] = None) -> nn.Module:
    """An inference-only version of ``model``: eval mode, BN folded, ``channels_last``, fused, optionally compiled,
    optionally in bfloat16 or int8.

    Args:
        model: Any module; it is copied unless ``inplace``. Only the hrnet_mm modules in it get fused.
        channels_last: Store weights (and expect inputs) in ``torch.channels_last``; faster on CPU and GPU.
        compile: Wrap with ``torch.compile`` (inductor; one-off compile time on the first call, tens of seconds
            on CPU). Then ``fuse`` defaults to False: inductor does its own fusion and weight packing.
        inplace: Modify ``model`` itself (the fused modules replace the originals in their parents).
        fuse: Rewrite the hrnet_mm modules' conv [+ add] [+ ReLU] chains into prepacked oneDNN convolutions
            (:func:`fuse_onednn`; CPU float32, other devices run the same graph with plain ops). Default: on
            when oneDNN is available and ``compile`` is off.
        freezing: With ``compile``, turn on inductor's weight freezing for this model only (weights become
            constants, folded and prepacked for oneDNN); the global inductor config is untouched.
        compile_options: Extra inductor options for ``torch.compile`` (e.g. ``{'max_autotune': True}``).
        tune_allocator: When the model is on the CPU, call :func:`tune_cpu_allocator` (process-wide: glibc keeps
            freed memory for the next forward instead of faulting it in again; up to 1.24x faster here).
        winograd: With ``fuse``, let each 3x3 stride-1 convolution use a Winograd kernel (:mod:`hrnet_mm.ops.winograd`)
            for the input shapes where timing shows it faster than oneDNN (CPU, channels_last inputs, float32, or
            bfloat16 with ``precision='bf16'`` where the processor has AVX512_BF16). Default: on when ``fuse`` is
            and the kernel builds here (C++ compiler and ninja; built once per machine, about a minute). Outputs
            then differ from the module's by about 1e-5 of their largest value instead of 1e-6 (float32); in
            bfloat16 a layer's rms error grows up to 5x (F(4x4)), the whole network's by about a fifth
            (:mod:`hrnet_mm.ops.winograd`).
        precision: ``'fp32'``, ``'bf16'`` or ``'int8'`` (:mod:`hrnet_mm.deploy.precision`): the convolutions in
            bfloat16 (processors with AVX512_BF16 or AMX only) or int8 (per-channel weights, per-layer activation
            ranges from ``calibration``). Both need the fused model (``fuse``, no ``compile``); int8 runs without
            Winograd. Layers they cannot convert stay float32, named in a warning; a bad request raises
            :class:`hrnet_mm.deploy.precision.PrecisionError` naming the fix.
        calibration: For ``'int8'``: the inputs to calibrate on, each passed as ``model(x)`` (a tensor),
            ``model(*x)`` (a tuple) or ``model(**x)`` (a dict); a few dozen like those the model will see.

    Returns:
        The prepared model. Feed it ``x.contiguous(memory_format=torch.channels_last)`` for full speed.
    """
    from .precision import PrecisionError, check_precision, to_bfloat16, to_int8, warn_float32_layers
    devices = {p.device for p in model.parameters()}
    on_cpu = all(d.type == 'cpu' for d in devices)
    precision = check_precision(precision, calibration, devices)
    if precision != 'fp32':
        if compile or fuse is False:
            raise PrecisionError(f'precision={precision!r} needs the fused deploy model: leave compile off and fuse on')
        if winograd and precision == 'int8':
            raise PrecisionError("the Winograd kernels are float32 and bfloat16 only: winograd=True with "
                                 "precision='int8'")
        if winograd and not winograd_ops.bf16_available():
            raise PrecisionError("winograd=True with precision='bf16' needs the bfloat16 Winograd kernel, which "
                                 'this build or processor lacks (an AVX-512 build on a processor with AVX512_BF16): '
                                 'leave winograd unset')
        fuse = True
        if precision == 'int8':
            winograd = False
    m = model if inplace else copy.deepcopy(model)
    m.eval()
    revert_cpu_kernels(m)
    fold_batchnorm(m)
    for p in m.parameters():
        p.requires_grad_(False)
    # In a task library's whole model only the hrnet_mm modules go channels_last, and they hand their outputs on in
    # the contiguous layout: the peers' heads call ops that read raw NCHW memory (mmcv's RoIAlign on the CPU gives
    # wrong values for a channels_last map)
    ours = _outermost_ours(m) if _is_task_model(m) else [(None, '')]
    if channels_last:
        if ours == [(None, '')]:
            m = m.to(memory_format=torch.channels_last)
        else:
            for parent, name in ours:
                setattr(parent, name, getattr(parent, name).to(memory_format=torch.channels_last))
    if fuse is None:
        fuse = onednn_available() and not compile
    if fuse:
        if winograd is None:
            winograd = on_cpu and winograd_ops.available()
        m = _fuse_ours(m, bool(winograd))
    if precision == 'bf16':
        m = to_bfloat16(m)
    elif precision == 'int8':
        m = to_int8(m, calibration)
    if precision != 'fp32':
        warn_float32_layers(m, precision)
    if ours != [(None, '')]:
        for parent, name in ours:
            getattr(parent, name).register_forward_hook(_contiguous_outputs)
    if tune_allocator and on_cpu:
        tune_cpu_allocator()
    if compile:
        options = dict(compile_options or {})
        if freezing:
            options.setdefault('freezing', True)
        m = CompiledDeploy(m, options)
    return m
