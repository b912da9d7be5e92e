"""The ImageNet classification head of HRNet (Wang et al., "Deep High-Resolution Representation Learning for
Visual Recognition", TPAMI 2020, Figure 11): each branch goes through a Bottleneck to 128/256/512/1024
channels, the highest resolution is downsampled by a strided 3x3 conv and added into the next branch
(repeated down to the lowest), and a 1x1 conv lifts the result to 2048 channels. Global average pooling and
a linear classifier follow (mmpretrain's ``GlobalAveragePooling`` and ``LinearClsHead`` in the configs).

Two key layouts exist among the published ImageNet checkpoints and both run exactly:

* ``layout='mmpretrain'`` (mmpretrain's ``HRFuseScales``): ``increase_layers``, ``downsample_layers.{i}.conv``
  and ``final_layer.conv`` without bias;
* ``layout='official'`` (HRNet-Image-Classification and timm): ``incre_modules``, ``downsamp_modules.{i}.0``
  and ``final_layer.0`` with conv biases (3,840 more parameters at W18).

The head compiles with ``torch.jit.script`` in both layouts (the input checks are skipped when scripted).
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule

from ..registry import MODELS
from .blocks import Bottleneck, make_res_layer
from .necks import ChannelsArg, ScriptableConvModule, branch_channels, check_inputs

LAYOUTS = ('mmpretrain', 'official')
HEAD_WIDTHS = (32, 64, 128, 256)  # Bottleneck widths; x4 gives 128, 256, 512, 1024


@MODELS.register_module()
class HRFuseScales(BaseModule):
    """Fuses the four HRNet branches into one ``out_channels`` map at the lowest resolution.

    Args:
        in_channels: Channels of the backbone branches, or a preset name (``'w18'``).
        out_channels: Channels of the final 1x1 conv (2048 in the paper).
        layout: ``'mmpretrain'`` or ``'official'`` (see the module docstring).
        norm_cfg: Norm of every layer of the head.
        init_cfg: mmengine init config.

    Shapes:
        inputs: tuple of 4 maps ``(N, C_i, H_i, W_i)``; output: tuple with one ``(N, out_channels, H_3, W_3)``.
    """

    __jit_unused_properties__ = ['is_init']  # mmengine's property, not needed by the compiled forward

    def __init__(self, in_channels: ChannelsArg, out_channels: int = 2048, layout: str = 'mmpretrain',
                 norm_cfg: Optional[dict] = None, init_cfg: Union[dict, List[dict], None] = None) -> None:
        if init_cfg is None:
            init_cfg = dict(type='Normal', layer='Linear', std=0.01)
        super().__init__(init_cfg=init_cfg)
        if layout not in LAYOUTS:
            raise ValueError(f'HRFuseScales layout must be one of {LAYOUTS}, got {layout!r}')
        self.in_channels = branch_channels(in_channels)
        if len(self.in_channels) > len(HEAD_WIDTHS):
            raise ValueError(f'HRFuseScales takes at most {len(HEAD_WIDTHS)} branches, got {self.in_channels}')
        self.layout = layout
        self.out_channels = out_channels
        norm_cfg = norm_cfg or dict(type='BN', momentum=0.1)
        widths = [w * Bottleneck.expansion for w in HEAD_WIDTHS]
        increase = nn.ModuleList(make_res_layer(Bottleneck, c, HEAD_WIDTHS[i], 1, norm_cfg=norm_cfg)
                                 for i, c in enumerate(self.in_channels))
        n = len(self.in_channels)
        if layout == 'mmpretrain':
            down = nn.ModuleList(ScriptableConvModule(widths[i], widths[i + 1], 3, stride=2, padding=1, bias=False,
                                                      norm_cfg=norm_cfg) for i in range(n - 1))
            final = ScriptableConvModule(widths[n - 1], out_channels, 1, bias=False, norm_cfg=norm_cfg)
            self.increase_layers, self.downsample_layers, self.final_layer = increase, down, final
        else:
            down = nn.ModuleList(self._conv_bn_relu(widths[i], widths[i + 1], 3, 2, norm_cfg) for i in range(n - 1))
            final = self._conv_bn_relu(widths[n - 1], out_channels, 1, 1, norm_cfg)
            self.incre_modules, self.downsamp_modules, self.final_layer = increase, down, final

    @staticmethod
    def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, norm_cfg: dict) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=True),
                             build_norm_layer(norm_cfg, cout)[1], nn.ReLU(inplace=True))

    def forward(self, inputs: List[torch.Tensor]) -> Tuple[torch.Tensor]:
        if not torch.jit.is_scripting():
            check_inputs(type(self).__name__, inputs, self.in_channels)
        # The layouts differ in names only; TorchScript resolves hasattr while compiling. Modules are iterated,
        # not indexed, which TorchScript requires.
        feats: List[torch.Tensor] = []
        if hasattr(self, 'increase_layers'):
            for i, layer in enumerate(self.increase_layers):
                feats.append(layer(inputs[i]))
        else:
            for i, layer in enumerate(self.incre_modules):
                feats.append(layer(inputs[i]))
        feat = feats[0]
        if hasattr(self, 'downsample_layers'):
            for i, down in enumerate(self.downsample_layers):
                feat = down(feat) + feats[i + 1]
        else:
            for i, down in enumerate(self.downsamp_modules):
                feat = down(feat) + feats[i + 1]
        return (self.final_layer(feat),)
