"""Fake kernels of hrnet_mm's operators: the shapes, dtypes and memory formats of their outputs without computing
them, for ``torch.compile`` (FakeTensor tracing) and ``torch.library.opcheck``. Registered once the extension is
loaded (:func:`hrnet_mm.ops.winograd.extension`)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

_REGISTERED = False


def _like(t: torch.Tensor, shape) -> torch.Tensor:
    """An empty tensor of ``shape`` with ``t``'s dtype and device, channels_last if ``t`` is (4-d)."""
    out = t.new_empty(shape)
    return out.contiguous(memory_format=_format(t)) if len(shape) == 4 else out


def train_conv3x3(x: torch.Tensor, weight: torch.Tensor, tile: int, weight_tile: int,
                  together: bool = False) -> torch.Tensor:
    """``conv2d(x, weight, padding=1)``: ``(N, K, H, W)`` in ``x``'s memory format."""
    torch._check(weight.dim() == 4 and weight.shape[2] == 3 and weight.shape[3] == 3)
    torch._check(x.shape[1] == weight.shape[1])
    return _like(x, (x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))


def train_conv3x3_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, tile: int, weight_tile: int,
                           together: bool, need_dx: bool, need_dw: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(input gradient like ``x``, weight gradient like ``weight``); an empty tensor for one not asked for."""
    dx = _like(x, x.shape) if need_dx else x.new_empty((0,))
    dw = weight.new_empty(weight.shape).contiguous(memory_format=_format(weight)) if need_dw \
        else weight.new_empty((0,))
    return dx, dw


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, out_channels: int, bias: Optional[torch.Tensor],
                     residual: Optional[torch.Tensor], relu: bool, tile: int) -> torch.Tensor:
    """The deploy convolution ``relu?(conv3x3(x) + bias [+ residual])``: ``(N, out_channels, H, W)``
    channels_last; ``u`` is the packed transformed weight ``((tile + 2)^2, C, out_channels rounded up to 8)``."""
    torch._check(u.dim() == 3 and u.shape[0] == (tile + 2) ** 2 and u.shape[1] == x.shape[1])
    return x.new_empty((x.shape[0], out_channels, x.shape[2], x.shape[3])).contiguous(
        memory_format=torch.channels_last)


def winograd_conv3x3_add_(x: torch.Tensor, u: torch.Tensor, out_channels: int, bias: Optional[torch.Tensor],
                          residual: torch.Tensor, relu: bool, tile: int) -> None:
    """:func:`winograd_conv3x3` written into ``residual``: nothing returned."""
    torch._check(residual.shape[1] == out_channels)


def batch_norm_act(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   residual: Optional[torch.Tensor], running_mean: Optional[torch.Tensor],
                   running_var: Optional[torch.Tensor], batch_stats: bool, momentum: float, eps: float,
                   relu: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y like ``x``, the per-channel mean and inverse standard deviation used)."""
    c = x.shape[1]
    return _like(x, x.shape), x.new_empty((c,)), x.new_empty((c,))


def batch_norm_act_backward(dy: torch.Tensor, x: torch.Tensor, y: Optional[torch.Tensor],
                            weight: Optional[torch.Tensor], mean: torch.Tensor, invstd: torch.Tensor,
                            batch_stats: bool, relu: bool, need_dx: bool, need_dweight: bool,
                            need_dz: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx like ``x``, dweight and dbias like ``mean``, dz like ``x``); an empty tensor for one not asked for."""
    empty = x.new_empty((0,))
    return (_like(x, x.shape) if need_dx else empty, mean.new_empty(mean.shape) if need_dweight else empty,
            mean.new_empty(mean.shape) if need_dweight else empty, _like(x, x.shape) if need_dz else empty)


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """The uint8 activations of the int8 deploy model: ``x``'s shape and memory format."""
    return _like(x, x.shape).to(torch.uint8)


def upsample_add(x: torch.Tensor, low: torch.Tensor, relu: bool) -> torch.Tensor:
    """``relu?(x + F.interpolate(low, size=x.shape[-2:], mode='nearest'))``: like ``x``."""
    torch._check(low.dim() == 4 and low.shape[:2] == x.shape[:2])
    return _like(x, x.shape)


def upsample_add_(x: torch.Tensor, low: torch.Tensor, relu: bool) -> None:
    """:func:`upsample_add` written into ``x``: nothing returned."""
    torch._check(low.dim() == 4 and low.shape[:2] == x.shape[:2])


def _format(t: torch.Tensor) -> torch.memory_format:
    cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def register() -> None:
    """Registers the fake kernels with the dispatcher (once per process; the operators must exist)."""
    global _REGISTERED
    if _REGISTERED:
        return
    for fn in (winograd_conv3x3, winograd_conv3x3_add_, train_conv3x3, train_conv3x3_backward, batch_norm_act,
               batch_norm_act_backward, quantize_u8, upsample_add, upsample_add_):
        torch.library.register_fake(f'hrnet_mm::{fn.__name__}')(fn)
    _REGISTERED = True
