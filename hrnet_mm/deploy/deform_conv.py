"""Deformable convolution in exportable form: torchvision's operator and its ONNX ``DeformConv`` translation.

DEKR's head samples its features with mmcv's ``DeformConv2d``, whose ONNX form is a custom ``mmcv::`` operator
that plain onnxruntime cannot run. :func:`swap_deform_convs` replaces each of them in a module tree with
:class:`DeformConv`, which calls ``torchvision.ops.deform_conv2d`` on the same weights (the same offset layout:
the results are equal to mmcv's bit for bit). Both ONNX exporters translate that operator into the standard
``DeformConv`` operator of opset 19 (:data:`MIN_OPSET`), which onnxruntime runs on the CPU:
:func:`register_torchscript_symbolic` for the TorchScript exporter, :func:`dynamo_translations` for the
dynamo exporter.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

MIN_OPSET = 19


class DeformConv(nn.Module):
    """mmcv's ``DeformConv2d`` (no modulation mask) on torchvision's operator, which reads the groups from the
    weight's and the offset's shapes.

    ``forward(x, offset)``: ``x`` ``(N, C, H, W)``, ``offset`` ``(N, 2 * deform_groups * kh * kw, H', W')``
    (per kernel point a y then an x displacement) -> ``(N, out_channels, H', W')``.
    """

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = getattr(conv, 'bias', None)
        self.stride, self.padding, self.dilation = tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation)

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import deform_conv2d

        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation)


def swap_deform_convs(module: nn.Module) -> int:
    """Replaces every mmcv ``DeformConv2d`` (not the modulated one) inside ``module`` with :class:`DeformConv`
    sharing its weights; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child).__name__ == 'DeformConv2d' and type(child).__module__.startswith('mmcv'):
            setattr(module, name, DeformConv(child))
            count += 1
        else:
            count += swap_deform_convs(child)
    return count


def has_deform_conv(module: nn.Module) -> bool:
    return any(isinstance(m, DeformConv) for m in module.modules())


def _torchscript_symbolic(g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                          n_weight_grps, n_offset_grps, use_mask):
    from torch.onnx import symbolic_helper as sh

    def const(v, name):
        return sh._get_const(v, 'i', name)

    if sh._get_const(use_mask, 'b', 'use_mask'):
        raise NotImplementedError('DeformConv export: modulated deformable convolution (a mask) is not supported')
    sh_, sw_ = const(stride_h, 'stride_h'), const(stride_w, 'stride_w')
    ph, pw = const(pad_h, 'pad_h'), const(pad_w, 'pad_w')
    dh, dw = const(dil_h, 'dil_h'), const(dil_w, 'dil_w')
    return g.op('DeformConv', input, weight, offset, bias, dilations_i=[dh, dw], group_i=const(n_weight_grps, 'g'),
                offset_group_i=const(n_offset_grps, 'og'), pads_i=[ph, pw, ph, pw], strides_i=[sh_, sw_])


def register_torchscript_symbolic(opset: int) -> None:
    """Lets the TorchScript exporter write ``torchvision::deform_conv2d`` as ONNX ``DeformConv``."""
    torch.onnx.register_custom_op_symbolic('torchvision::deform_conv2d', _torchscript_symbolic, opset)


def dynamo_translations() -> Dict:
    """The dynamo exporter's ``custom_translation_table`` entry for ``torchvision::deform_conv2d``."""
    import torchvision  # noqa: F401  (registers the operator)
    from onnxscript import opset19 as op

    def deform_conv2d(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
                      dil_h: int, dil_w: int, n_weight_grps: int, n_offset_grps: int, use_mask: bool):
        return op.DeformConv(input, weight, offset, bias, dilations=[dil_h, dil_w], group=n_weight_grps,
                             offset_group=n_offset_grps, pads=[pad_h, pad_w, pad_h, pad_w],
                             strides=[stride_h, stride_w])

    return {torch.ops.torchvision.deform_conv2d.default: deform_conv2d}
