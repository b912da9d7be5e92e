"""The HRNetV2 and HRNetV2p representations (Wang et al., "Deep High-Resolution Representation Learning
for Visual Recognition", TPAMI 2020, section 3 "Heads"):

* :class:`HRNetV2Neck` (``hrnet_mm.HRNetV2Neck``): bilinearly upsample every branch to the highest
  resolution, concatenate (15C channels for C/2C/4C/8C) and, optionally, mix with a 1x1 conv+norm+act.
  With ``out_channels=15C`` and an mmseg ``FCNHead(num_convs=0, concat_input=False)`` it computes exactly
  mmseg's ``fcn_hr18``/``fcn_hr48`` decode path.
* :class:`HRNetV2pNeck` (``hrnet_mm.HRNetV2pNeck``): the concatenation, a 1x1 reduction, then a pyramid
  of ``num_outs`` levels by average (or max) pooling and a 3x3 conv per level. Its keys and, by default,
  its outputs are those of mmdet's ``HRFPN``; unlike ``HRFPN`` it applies ``norm_cfg`` when one is given.

Both take ``in_channels`` as a list or as the name of a backbone preset (``in_channels='w32'``), so
configs need not retype channel lists.

Both compile with ``torch.jit.script``. Their conv layers are :class:`ScriptableConvModule`, a subclass of
mmcv's ``ConvModule`` with the same keys, initialisation and eager forward, plus a forward that TorchScript can
compile. Scripted, the input checks and gradient checkpointing are skipped and :class:`HRNetV2pNeck` returns a
list instead of a tuple.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule

from ..registry import MODELS
from .arch import get_preset

ChannelsArg = Union[str, Sequence[int]]


class ScriptableConvModule(ConvModule):
    """mmcv's ``ConvModule`` (same arguments, keys and eager forward) that also compiles with TorchScript.

    The scripted forward runs conv, norm, activation in mmcv's default order, the only one the HRNet necks use;
    the norm layer is found by its mmcv name (``bn``, ``gn``, ``ln`` or ``in``), resolved at compile time.
    """

    __jit_unused_properties__ = ['norm', 'is_init']  # Python-side properties the compiled forward does not use

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if tuple(self.order) != ('conv', 'norm', 'act') or self.with_explicit_padding:
            raise ValueError('ScriptableConvModule supports the default order and padding only')

    def forward(self, x: torch.Tensor, activate: bool = True, norm: bool = True) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return super().forward(x, activate, norm)
        x = self.conv(x)
        if norm:
            if hasattr(self, 'bn'):
                x = self.bn(x)
            elif hasattr(self, 'gn'):
                x = self.gn(x)
            elif hasattr(self, 'ln'):
                x = self.ln(x)
            elif hasattr(self, 'in'):
                x = getattr(self, 'in')(x)
        if activate and hasattr(self, 'activate'):
            x = self.activate(x)
        return x


def branch_channels(arch: ChannelsArg) -> Tuple[int, ...]:
    """Output channels of the last stage of a preset (``'w32'`` -> ``(32, 64, 128, 256)``), or the given list."""
    if isinstance(arch, str):
        last = get_preset(arch)[-1]
        expansion = 4 if last.block == 'BOTTLENECK' else 1
        return tuple(c * expansion for c in last.num_channels)
    channels = tuple(int(c) for c in arch)
    if not channels or any(c <= 0 for c in channels):
        raise ValueError(f'in_channels must be a non-empty list of positive ints or a preset name, got {arch!r}')
    return channels


def check_inputs(owner: str, inputs: Sequence[torch.Tensor], in_channels: Sequence[int]) -> None:
    """Raises ``ValueError`` naming the branch when the backbone's outputs do not fit ``in_channels``."""
    if len(inputs) != len(in_channels):
        raise ValueError(f'{owner} expects {len(in_channels)} branches with channels {list(in_channels)}, got '
                         f'{len(inputs)} input(s) with channels {[x.shape[1] for x in inputs]}: does the '
                         'backbone return all branches (out_indices)?')
    for i, (x, c) in enumerate(zip(inputs, in_channels)):
        if x.dim() != 4 or x.shape[1] != c:
            raise ValueError(f'{owner} input {i} has shape {tuple(x.shape)} but in_channels[{i}]={c}; the '
                             f'backbone gives {[t.shape[1] for t in inputs]}, in_channels is {list(in_channels)}')


def upsample_concat(inputs: List[torch.Tensor], mode: str = 'bilinear',
                    align_corners: Optional[bool] = False) -> torch.Tensor:
    """Resizes every map to the size of ``inputs[0]`` and concatenates along channels: ``(N, sum C_i, H_0, W_0)``."""
    size = inputs[0].shape[-2:]
    if mode == 'nearest':
        align_corners = None
    maps = [inputs[0]] + [F.interpolate(x, size=size, mode=mode, align_corners=align_corners)
                          for x in inputs[1:]]
    return torch.cat(maps, dim=1)


@MODELS.register_module()
class HRNetV2Neck(BaseModule):
    """HRNetV2: upsample all branches to the highest resolution, concatenate, optionally mix.

    Args:
        in_channels: Channels of the backbone branches, or a preset name (``'w18'``).
        out_channels: Channels of the 1x1 mix conv; ``None`` returns the plain concatenation (15C channels).
        conv_cfg: mmcv conv config of the mix conv.
        norm_cfg: Norm of the mix conv (BN by default; mmseg uses SyncBN in multi-GPU configs).
        act_cfg: Activation of the mix conv.
        align_corners: Of the bilinear upsampling (mmseg's HRNet configs use False).
        bias: Bias of the mix conv; ``'auto'`` (none before a norm, as in mmseg) or True (the official
            segmentation code, whose mix conv has a bias).
        init_cfg: mmengine init config.

    Shapes:
        inputs: tuple of ``(N, C_i, H_i, W_i)``; output: tuple with one ``(N, out_channels, H_0, W_0)``.
    """

    __jit_unused_properties__ = ['is_init']  # mmengine's property, not needed by the compiled forward

    def __init__(self, in_channels: ChannelsArg, out_channels: Optional[int] = None,
                 conv_cfg: Optional[dict] = None, norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None, align_corners: bool = False, bias: Union[bool, str] = 'auto',
                 init_cfg: Union[dict, List[dict], None] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = branch_channels(in_channels)
        self.concat_channels = sum(self.in_channels)
        self.align_corners = align_corners
        self.mix = None
        if out_channels is not None:
            self.mix = ScriptableConvModule(self.concat_channels, out_channels, 1, conv_cfg=conv_cfg, bias=bias,
                                            norm_cfg=norm_cfg if norm_cfg is not None else dict(type='BN'),
                                            act_cfg=act_cfg if act_cfg is not None else dict(type='ReLU'))
        self.out_channels = out_channels if out_channels is not None else self.concat_channels

    def forward(self, inputs: List[torch.Tensor]) -> Tuple[torch.Tensor]:
        if not torch.jit.is_scripting():
            check_inputs(type(self).__name__, inputs, self.in_channels)
        out = upsample_concat(inputs, 'bilinear', self.align_corners)
        if self.mix is not None:
            out = self.mix(out)
        return (out,)


@MODELS.register_module()
class HRNetV2pNeck(BaseModule):
    """HRNetV2p: a feature pyramid from the HRNetV2 representation (keys of mmdet's ``HRFPN``).

    Args:
        in_channels: Channels of the backbone branches, or a preset name (``'w32'``).
        out_channels: Channels of every pyramid level.
        num_outs: Number of levels; level ``i`` is pooled by ``2**i`` from the stride-4 map.
        pooling_type: ``'AVG'`` or ``'MAX'``.
        conv_cfg: mmcv conv config of the reduction and level convs.
        norm_cfg: Norm after the reduction and level convs; None (the default, as in HRFPN) gives convs
            with bias and no norm.
        with_cp: Gradient checkpointing of the reduction and level convs.
        stride: Stride of the level convs (FCOS uses 2).
        init_cfg: mmengine init config (HRFPN's Caffe2 Xavier by default).

    Shapes:
        inputs: tuple of ``(N, C_i, H_i, W_i)``; outputs: ``num_outs`` maps ``(N, out_channels, h_l, w_l)``
        with ``h_l = floor(H_0 / 2**l)`` before the level conv's stride.
    """

    __jit_unused_properties__ = ['is_init']  # mmengine's property, not needed by the compiled forward

    def __init__(self, in_channels: ChannelsArg, out_channels: int = 256, num_outs: int = 5,
                 pooling_type: str = 'AVG', conv_cfg: Optional[dict] = None, norm_cfg: Optional[dict] = None,
                 with_cp: bool = False, stride: int = 1,
                 init_cfg: Union[dict, List[dict], None] = None) -> None:
        if init_cfg is None:
            init_cfg = dict(type='Caffe2Xavier', layer='Conv2d')
        super().__init__(init_cfg=init_cfg)
        if pooling_type not in ('AVG', 'MAX'):
            raise ValueError(f"HRNetV2pNeck pooling_type must be 'AVG' or 'MAX', got {pooling_type!r}")
        if num_outs < 1:
            raise ValueError(f'HRNetV2pNeck num_outs must be >= 1, got {num_outs}')
        self.in_channels = branch_channels(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.with_cp = with_cp
        self.norm_cfg = norm_cfg
        self.reduction_conv = ScriptableConvModule(sum(self.in_channels), out_channels, 1, conv_cfg=conv_cfg,
                                                   norm_cfg=norm_cfg, act_cfg=None)
        self.fpn_convs = nn.ModuleList(
            ScriptableConvModule(out_channels, out_channels, 3, padding=1, stride=stride, conv_cfg=conv_cfg,
                                 norm_cfg=norm_cfg, act_cfg=None) for _ in range(num_outs))
        self.pooling_type = pooling_type

    def _run(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(layer, x, use_reentrant=False)
        return layer(x)

    def _pool(self, x: torch.Tensor, k: int) -> torch.Tensor:
        if self.pooling_type == 'MAX':
            return F.max_pool2d(x, kernel_size=k, stride=k)
        return F.avg_pool2d(x, kernel_size=k, stride=k)

    def forward(self, inputs: List[torch.Tensor]):
        """Maps the branch maps to a tuple of ``num_outs`` levels (a list when scripted)."""
        if torch.jit.is_scripting():
            out = self.reduction_conv(upsample_concat(inputs, 'bilinear', False))
            outs: List[torch.Tensor] = []
            for i, conv in enumerate(self.fpn_convs):
                outs.append(conv(out if i == 0 else self._pool(out, 1 << i)))
            return outs
        else:
            check_inputs(type(self).__name__, inputs, self.in_channels)
            out = self._run(self.reduction_conv, upsample_concat(inputs, 'bilinear', False))
            levels = [out] + [self._pool(out, 1 << i) for i in range(1, self.num_outs)]
            return tuple(self._run(conv, x) for conv, x in zip(self.fpn_convs, levels))
