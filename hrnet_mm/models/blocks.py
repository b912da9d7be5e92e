"""Residual blocks of HRNet (Wang et al., "Deep High-Resolution Representation Learning for Visual
Recognition", TPAMI 2020): the Basic block of the parallel branches and the Bottleneck of stage 1 and
of the classification head.

Parameter names follow the official code and every OpenMMLab peer (``conv1``, ``bn1``, ..., ``downsample.0``,
``downsample.1``), so published checkpoints load without conversion. The norm layers take the names that
``mmcv.cnn.build_norm_layer`` gives them (``bn1`` for BN, ``gn1`` for GN), as in mmdet/mmseg/mmpose.

The blocks run under ``torch.jit.script``: TorchScript cannot look a module up by a computed name, so the
norm layers are reached through :class:`NamedNorms`, whose ``hasattr`` tests TorchScript resolves while
compiling, and gradient checkpointing is skipped in scripted code (it is a training-time memory saving).

Each block has one forward: the residual branch, the shortcut, their sum and a ReLU, with the whole block
recomputed in the backward pass when ``with_cp`` is set. hrnet_mm's CPU training kernels replace the blocks by
subclasses with the same parameters (:func:`hrnet_mm.ops.convert_cpu_kernels`); this module knows nothing of them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_conv_layer, build_norm_layer


class NamedNorms(nn.Module):
    """Calls the norm layers that ``mmcv.cnn.build_norm_layer(cfg, c, postfix=k)`` registered as ``bn{k}``
    (BN, SyncBN), ``gn{k}`` (GN), ``ln{k}`` (LN) or ``in{k}`` (IN), for ``k`` in 1..3.

    ``_norm1(x)`` .. ``_norm3(x)`` are written out with literal names because ``torch.jit.script`` only accepts
    literal attribute names; it evaluates ``hasattr`` at compile time and compiles the branch of the layer that
    exists. Eager code takes the same branch, so both run the same layer.
    """

    def _norm1(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, 'bn1'):
            return self.bn1(x)
        elif hasattr(self, 'gn1'):
            return self.gn1(x)
        elif hasattr(self, 'ln1'):
            return self.ln1(x)
        elif hasattr(self, 'in1'):
            return self.in1(x)
        else:
            raise RuntimeError('no norm layer bn1/gn1/ln1/in1')

    def _norm2(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, 'bn2'):
            return self.bn2(x)
        elif hasattr(self, 'gn2'):
            return self.gn2(x)
        elif hasattr(self, 'ln2'):
            return self.ln2(x)
        elif hasattr(self, 'in2'):
            return self.in2(x)
        else:
            raise RuntimeError('no norm layer bn2/gn2/ln2/in2')

    def _norm3(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, 'bn3'):
            return self.bn3(x)
        elif hasattr(self, 'gn3'):
            return self.gn3(x)
        elif hasattr(self, 'ln3'):
            return self.ln3(x)
        elif hasattr(self, 'in3'):
            return self.in3(x)
        else:
            raise RuntimeError('no norm layer bn3/gn3/ln3/in3')


class _ResidualBlock(NamedNorms):
    """What the two blocks share: norm layer naming, the residual sum and gradient checkpointing."""

    expansion = 1
    num_norms = 2
    # Python-side helpers that TorchScript need not (and cannot) compile.
    __jit_unused_properties__ = ['last_norm']

    def __init__(self, with_cp: bool = False) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.relu = nn.ReLU(inplace=True)

    def _add_norm(self, index: int, norm_cfg: dict, channels: int) -> None:
        name, layer = build_norm_layer(norm_cfg, channels, postfix=index)
        setattr(self, f'_norm{index}_name', name)
        self.add_module(name, layer)

    @torch.jit.unused
    def norm(self, index: int) -> nn.Module:
        """Returns the ``index``-th norm layer (1-based)."""
        return getattr(self, getattr(self, f'_norm{index}_name'))

    @property
    def last_norm(self) -> nn.Module:
        """The norm layer that ``zero_init_residual`` sets to zero."""
        return self.norm(self.num_norms)

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        """``residual(x) + shortcut(x)``, before the last ReLU."""
        identity = x if self.downsample is None else self.downsample(x)
        return self._residual(x) + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(N, C_in, H, W)`` to ``(N, planes * expansion, H', W')``."""
        if not torch.jit.is_scripting() and self.with_cp and x.requires_grad:
            return self.relu(cp.checkpoint(self._inner, x, use_reentrant=False))
        return self.relu(self._inner(x))


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions with a residual connection.

    Args:
        inplanes: Input channels.
        planes: Output channels.
        stride: Stride of the first convolution.
        downsample: Module applied to the identity path, or None.
        with_cp: Recompute the block in the backward pass to save activation memory.
        conv_cfg: mmcv conv config (None for ``nn.Conv2d``).
        norm_cfg: mmcv norm config.
    """

    expansion = 1
    num_norms = 2

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 with_cp: bool = False, conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__(with_cp)
        norm_cfg = norm_cfg or dict(type='BN')
        self.conv1 = build_conv_layer(conv_cfg, inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self._add_norm(1, norm_cfg, planes)
        self.conv2 = build_conv_layer(conv_cfg, planes, planes, 3, padding=1, bias=False)
        self._add_norm(2, norm_cfg, planes)
        self.downsample = downsample

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self._norm1(self.conv1(x)))
        return self._norm2(self.conv2(out))


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4), with a residual connection (stride on the 3x3 conv).

    Args:
        inplanes: Input channels.
        planes: Width of the 3x3 convolution; the block outputs ``planes * 4`` channels.
        stride: Stride of the 3x3 convolution.
        downsample: Module applied to the identity path, or None.
        with_cp: Recompute the block in the backward pass to save activation memory.
        conv_cfg: mmcv conv config (None for ``nn.Conv2d``).
        norm_cfg: mmcv norm config.
    """

    expansion = 4
    num_norms = 3

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 with_cp: bool = False, conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__(with_cp)
        norm_cfg = norm_cfg or dict(type='BN')
        self.conv1 = build_conv_layer(conv_cfg, inplanes, planes, 1, bias=False)
        self._add_norm(1, norm_cfg, planes)
        self.conv2 = build_conv_layer(conv_cfg, planes, planes, 3, stride=stride, padding=1, bias=False)
        self._add_norm(2, norm_cfg, planes)
        self.conv3 = build_conv_layer(conv_cfg, planes, planes * self.expansion, 1, bias=False)
        self._add_norm(3, norm_cfg, planes * self.expansion)
        self.downsample = downsample

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self._norm1(self.conv1(x)))
        out = self.relu(self._norm2(self.conv2(out)))
        return self._norm3(self.conv3(out))


BLOCKS = {'BASIC': BasicBlock, 'BOTTLENECK': Bottleneck}


class ConvNorm(nn.Sequential):
    """Convolution, norm and optionally ReLU: an ``nn.Sequential`` (keys ``0``, ``1``, ``2`` as in the official
    code) of its own type, so that the CPU training kernels can find and replace it."""


def conv_norm(conv_cfg: Optional[dict], norm_cfg: Optional[dict], cin: int, cout: int, kernel: int, stride: int,
              relu: bool) -> ConvNorm:
    """A ``kernel`` x ``kernel`` convolution (no bias, same padding) of stride ``stride``, its norm and, with
    ``relu``, a ReLU."""
    layers = [build_conv_layer(conv_cfg, cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
              build_norm_layer(norm_cfg or dict(type='BN'), cout)[1]]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return ConvNorm(*layers)


def make_res_layer(block: type, inplanes: int, planes: int, num_blocks: int, stride: int = 1,
                   with_cp: bool = False, conv_cfg: Optional[dict] = None,
                   norm_cfg: Optional[dict] = None) -> nn.Sequential:
    """A sequence of ``num_blocks`` blocks; the first gets a 1x1 conv+norm shortcut when the shape changes.

    Returns:
        ``nn.Sequential`` whose keys are ``{k}.conv1``, ..., ``0.downsample.{0,1}`` as in the official code.
    """
    norm_cfg = norm_cfg or dict(type='BN')
    downsample = None
    out = planes * block.expansion
    if stride != 1 or inplanes != out:
        downsample = conv_norm(conv_cfg, norm_cfg, inplanes, out, 1, stride, relu=False)
    layers = [block(inplanes, planes, stride, downsample, with_cp, conv_cfg, norm_cfg)]
    layers += [block(out, planes, 1, None, with_cp, conv_cfg, norm_cfg) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)
