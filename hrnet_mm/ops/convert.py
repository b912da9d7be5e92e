"""Putting the CPU training kernels into a model, and taking them out again.

:func:`convert_cpu_kernels` swaps, in place, the class of every HRNet backbone, residual block and
conv-norm(-ReLU) layer in a module for a subclass defined here, the way ``nn.SyncBatchNorm.convert_sync_batchnorm``
swaps norm layers: the parameters, buffers, child modules and state-dict keys stay what they are (an optimizer
built before the swap keeps working), only the forward of a float32 CPU training step changes:

* :class:`KernelHRNet` runs the step in ``torch.channels_last`` (the input is converted in forward, the outputs are
  returned in the input's memory format, the weights stay as they are) with the stem's norms and ReLUs fused;
* :class:`KernelBasicBlock`, :class:`KernelBottleneck` and :class:`KernelConvNorm` compute their 3x3 stride-1
  convolutions with :func:`hrnet_mm.ops.winograd.train_conv` and every batch norm, together with the residual sum
  and ReLU after it, with :func:`hrnet_mm.ops.fused_norm.norm_act`.

Both kernels compute the same function as the plain layers, up to float32 rounding, and fall back to them wherever
they do not apply (eval mode, CUDA, other dtypes, autocast, tracing, ONNX export, norm layers other than BN, no C++
compiler). They are dispatcher operators (``torch.ops.hrnet_mm``) with fake kernels, so ``torch.compile`` traces a
training step with them in one graph. :func:`revert_cpu_kernels` restores the plain classes; ``torch.jit.script`` sees
the plain classes too (``__prepare_scriptable__``), as do :func:`hrnet_mm.deploy.to_deploy` and the exports.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from ..models.blocks import BasicBlock, Bottleneck, ConvNorm
from ..models.hrnet import HRNet
from .fused_norm import FUSABLE_NORMS, norm_act
from .winograd import cpu_training_step, train_conv

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


class _Kernels:
    """What the kernel classes share: the plain class they stand for, and a plain copy for TorchScript."""

    plain: type

    def _get_name(self) -> str:  # printed as the architecture it computes
        return self.plain.__name__

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script`` compiles the plain class: a shallow copy with the same parameters and children
        (the scripting pass then prepares the children in turn; the original module is left as it is)."""
        copy = self.plain.__new__(self.plain)
        copy.__dict__.update(self.__dict__)
        for name in ('_modules', '_parameters', '_buffers'):
            copy.__dict__[name] = dict(self.__dict__[name])
        prepare = getattr(copy, '__prepare_scriptable__', None)
        return prepare() if prepare is not None else copy


def _norm_relu(norm: nn.Module, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """``relu(norm(x))`` by the fused kernel; inside a checkpoint with the ReLU separate, so that the kernel saves
    only its input for the backward pass (with the ReLU it saves its output, which a recomputation kept alive until
    the end of the backward pass: 1.21x the memory of no checkpointing instead of 0.33x for a W32 step)."""
    if checkpointed:
        return torch.relu_(norm_act(norm, x))
    return norm_act(norm, x, relu=True)


class _KernelBlock(_Kernels):
    """The training forward of a residual block with the kernels: ``_kernel_inner``, checkpointed with ``with_cp``
    (its last ReLU then separate, as :func:`_norm_relu` explains); eval mode runs the plain block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        if self.with_cp and x.requires_grad:
            return torch.relu_(cp.checkpoint(self._kernel_inner, x, True, use_reentrant=False))
        return self._kernel_inner(x, False)

    def _kernel_inner(self, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
        raise NotImplementedError


class KernelBasicBlock(_KernelBlock, BasicBlock):
    """:class:`~hrnet_mm.models.blocks.BasicBlock` whose training step uses the CPU kernels."""

    plain = BasicBlock

    def _kernel_inner(self, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
        """``relu(residual(x) + shortcut(x))`` (checkpointed: without the last ReLU)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = _norm_relu(self.norm(1), train_conv(self.conv1, x), checkpointed)
        return norm_act(self.norm(2), train_conv(self.conv2, out), residual=identity, relu=not checkpointed)


class KernelBottleneck(_KernelBlock, Bottleneck):
    """:class:`~hrnet_mm.models.blocks.Bottleneck` whose training step uses the CPU kernels."""

    plain = Bottleneck

    def _kernel_inner(self, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
        """``relu(residual(x) + shortcut(x))`` (checkpointed: without the last ReLU)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = _norm_relu(self.norm(1), self.conv1(x), checkpointed)
        out = _norm_relu(self.norm(2), train_conv(self.conv2, out), checkpointed)
        return norm_act(self.norm(3), self.conv3(out), residual=identity, relu=not checkpointed)


class KernelConvNorm(_Kernels, ConvNorm):
    """:class:`~hrnet_mm.models.blocks.ConvNorm` (transitions, fusion paths, shortcuts) whose training step uses
    the CPU kernels."""

    plain = ConvNorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        return norm_act(self[1], train_conv(self[0], x), relu=len(self) > 2)


class KernelHRNet(_Kernels, HRNet):
    """:class:`~hrnet_mm.models.hrnet.HRNet` whose float32 CPU training step runs in channels_last with the stem's
    norms fused, when every norm layer is one the fused kernel takes (with torch's own NHWC norms, GN or SyncBN,
    channels_last can be slower than NCHW); its output maps have the input's memory format."""

    plain = HRNet

    def forward(self, x: torch.Tensor):
        if not (self.training and cpu_training_step(x) and self._norms_fusable()):
            return super().forward(x)
        restore = not x.is_contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        x = norm_act(self.norm1, self.conv1(x), relu=True)
        x = norm_act(self.norm2, self.conv2(x), relu=True)
        outs = self.forward_stages(x)
        return tuple(o.contiguous() for o in outs) if restore else outs

    def _norms_fusable(self) -> bool:
        """Whether every norm layer is one :func:`~hrnet_mm.ops.fused_norm.norm_act` fuses; worked out once per
        ``train()`` call (a runner swaps norm layers, SyncBN to BN, before it)."""
        compiling = torch.compiler.is_compiling()  # traced once per compiled graph: no cache to keep
        fusable = None if compiling else self.__dict__.get('_fusable')
        if fusable is None:
            fusable = all(type(m) in FUSABLE_NORMS for m in self.modules() if isinstance(m, _NORMS))
            if not compiling:
                self.__dict__['_fusable'] = fusable
        return fusable

    def train(self, mode: bool = True) -> 'KernelHRNet':
        self.__dict__.pop('_fusable', None)
        return super().train(mode)

    def __getstate__(self) -> Dict[str, object]:  # a copy may get other norm layers (revert_sync_batchnorm)
        state = dict(self.__dict__)
        state.pop('_fusable', None)
        return state


KERNEL_CLASSES: Dict[type, type] = {cls.plain: cls for cls in (KernelHRNet, KernelBasicBlock, KernelBottleneck,
                                                               KernelConvNorm)}


def convert_cpu_kernels(module: nn.Module) -> nn.Module:
    """Gives every hrnet_mm HRNet, residual block and conv-norm layer in ``module`` (``module`` included) the
    training forward of the CPU kernels, in place, by swapping its class for the matching kernel class (module
    docstring). Parameters, buffers and keys are unchanged. Returns ``module``."""
    for m in module.modules():
        kernel = KERNEL_CLASSES.get(type(m))
        if kernel is not None:
            m.__class__ = kernel
    return module


def revert_cpu_kernels(module: nn.Module) -> nn.Module:
    """Undoes :func:`convert_cpu_kernels` in place: every kernel class back to its plain class. Returns
    ``module``."""
    for m in module.modules():
        if isinstance(m, _Kernels):
            m.__dict__.pop('_fusable', None)
            m.__class__ = m.plain
    return module


def uses_cpu_kernels(module: nn.Module) -> bool:
    """Whether any module in ``module`` has the training forward of the CPU kernels."""
    return any(isinstance(m, _Kernels) for m in module.modules())
