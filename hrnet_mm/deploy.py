"""Inference-only HRNet: the same function, prepared to run faster.

:func:`to_deploy` returns a copy of a model (any module tree containing hrnet_mm modules, or a whole
mmdet/mmseg/mmpose/mmpretrain model) in eval mode with every convolution+batch-norm pair folded into one
convolution, optionally in ``channels_last`` memory format and compiled with ``torch.compile``. Outputs equal
the original's within float32 rounding (the folding changes the order of a few multiplications).
"""
from __future__ import annotations

import copy
from typing import Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


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


def to_deploy(model: nn.Module, channels_last: bool = True, compile: bool = False, inplace: bool = False
              ) -> nn.Module:
    """An inference-only version of ``model``: eval mode, BN folded, ``channels_last``, optionally compiled.

    Args:
        model: Any module; it is copied unless ``inplace``.
        channels_last: Store weights (and expect inputs) in ``torch.channels_last``; faster on CPU and GPU.
        compile: Wrap with ``torch.compile`` (one-off compile time on the first call).
        inplace: Modify ``model`` itself.

    Returns:
        The prepared model. Feed it ``x.contiguous(memory_format=torch.channels_last)`` for full speed.
    """
    m = model if inplace else copy.deepcopy(model)
    m.eval()
    fold_batchnorm(m)
    for p in m.parameters():
        p.requires_grad_(False)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    if compile:
        m = torch.compile(m)
    return m
