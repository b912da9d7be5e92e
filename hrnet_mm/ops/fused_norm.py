"""Batch norm fused with the residual sum and ReLU after it, for the CPU channels_last training step.

``relu(bn(x) [+ residual])`` is what every HRNet block, stem layer, transition and fusion path computes after a
convolution. In a channels_last float32 training step on the CPU, torch runs it as two or three kernels each
way (batch norm, add, ReLU; then ReLU's mask, batch norm's backward), and its NHWC batch-norm kernels are
several times slower than its NCHW ones when the channel count is not a multiple of 8 (HRNet-W18's 18, 36
and 72). :func:`norm_act` does it in one kernel each way (``hrnet_mm/ops/csrc/norm.cpp``, in the extension of
:mod:`hrnet_mm.ops.winograd`): two reading passes and one writing pass forward, one and one backward.

It computes what the modules compute: the batch statistics in training (the running statistics, and
``num_batches_tracked``, updated as ``torch.nn.BatchNorm2d`` updates them, momentum ``None`` included), the
running statistics for a layer in eval mode (``norm_eval``, frozen stages), and the gradients of the input,
weight, bias and residual. The sums run in double, so the results agree with torch's to float32 rounding
(tests/ops/test_fused_norm.py), not bit for bit.

Anything else goes through the modules unchanged: other norm layers (SyncBN itself, GN, ...), NCHW or
non-float32 inputs (autocast), CUDA, ``torch.jit.script`` / tracing / ONNX export, or a
machine where the extension cannot be built.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import winograd

try:  # what mmengine's runner turns SyncBN into when training is not distributed (revert_sync_batchnorm)
    from mmengine.model.utils import _BatchNormXd
    FUSABLE_NORMS: tuple = (nn.BatchNorm2d, _BatchNormXd)
except ImportError:  # pragma: no cover - an mmengine without it
    FUSABLE_NORMS = (nn.BatchNorm2d,)


def fusable(norm: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`norm_act` runs the fused kernel for this layer and input: a ``torch.nn.BatchNorm2d`` or
    mmengine's ``_BatchNormXd`` (exactly: other subclasses may change the forward; :data:`FUSABLE_NORMS`) on a 4-d
    float32 channels_last CPU map, outside scripting, tracing and ONNX export, with the extension available
    (``torch.compile`` traces the operator)."""
    return (type(norm) in FUSABLE_NORMS and x.dim() == 4 and x.dtype == torch.float32 and x.device.type == 'cpu'
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.jit.is_scripting() and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
            and winograd.available())


def _run(norm: nn.BatchNorm2d, x: torch.Tensor, residual: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
    # torch.nn.modules.batchnorm._BatchNorm.forward, step by step
    momentum = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
    track = not norm.training or norm.track_running_stats
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    return _apply(x, norm.weight, norm.bias, residual, norm.running_mean if track else None,
                  norm.running_var if track else None, batch_stats, momentum, norm.eps, relu)


def _apply(*args):
    """The operator ``torch.ops.hrnet_mm.batch_norm_act`` (its autograd node is C++: no Python call per layer
    backward): the normalised map; the statistics it also returns are for the backward pass."""
    return torch.ops.hrnet_mm.batch_norm_act(*args)[0]


def norm_act(norm: nn.Module, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
             relu: bool = False) -> torch.Tensor:
    """``relu?(norm(x) [+ residual])``: by the fused kernel when :func:`fusable`, otherwise by the module (then
    ``+`` and an in-place ReLU)."""
    if fusable(norm, x) and (not norm.training or x.numel() > x.shape[1]) and (
            residual is None or (residual.shape == x.shape and residual.dtype == x.dtype
                                 and residual.device == x.device)):
        return _run(norm, x, residual, relu)
    y = norm(x)
    if residual is not None:
        y = y + residual
    return F.relu(y, inplace=True) if relu else y
