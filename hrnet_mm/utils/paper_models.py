"""The reference networks of the HRNet papers, for parameter and FLOP counts.

These are the exact layouts whose parameter counts and GFLOPs the official HRNet repositories publish
(classification: HRNet + the official ``HRFuseScales`` head + a 1000-way linear classifier; pose: HRNetV1 with a
1x1 17-keypoint heatmap layer; segmentation: HRNetV2 with the official concat + 1x1 conv (with bias) + BN + ReLU
and a 1x1 classifier). ``tests/models/test_counts.py`` checks them against the published numbers and
``tools/analysis/get_flops.py --arch ... --task ...`` prints them.

Example::

    import torch
    from hrnet_mm.utils import count_macs, count_params
    from hrnet_mm.utils.paper_models import build_paper_model

    with torch.device('meta'):
        model = build_paper_model('w32', 'pose')
    count_params(model)                                     # 28_536_113
    count_macs(model, (3, 256, 192))['total'] / 2 ** 30     # 7.12 GFLOPs in the paper's convention
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn

from hrnet_mm.models import HRFuseScales, HRNet, HRNetV2Neck


class Cls(nn.Module):
    """The paper's ImageNet classifier: HRNet, the official ``HRFuseScales`` head (to 2048 channels), global
    average pooling and a 1000-way linear layer.

    Args:
        arch: An HRNet preset name (``'w18'`` ... ``'w64'``, ``'w18_small'``, ``'w18_small_v2'``).
    """

    def __init__(self, arch: str):
        super().__init__()
        self.backbone = HRNet(arch=arch)
        self.head = HRFuseScales(arch, layout='official')
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.backbone(x))[0].mean((2, 3)))


class Pose(nn.Module):
    """The paper's top-down pose estimator (SimpleBaseline-style): HRNetV1 (the highest-resolution branch) and a
    1x1 conv to 17 keypoint heatmaps.

    Args:
        arch: An HRNet preset name.
    """

    def __init__(self, arch: str):
        super().__init__()
        self.backbone = HRNet(arch=arch, out_indices=(0,))
        self.final_layer = nn.Conv2d(self.backbone.out_channels[0], 17, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.backbone(x)[0])


class Seg(nn.Module):
    """The official HRNetV2 segmentation network: concat, 1x1 conv (with bias)+BN+ReLU, 1x1 classifier.

    Args:
        arch: An HRNet preset name.
        classes: Number of classes (19 for Cityscapes).
    """

    def __init__(self, arch: str, classes: int = 19):
        super().__init__()
        self.backbone = HRNet(arch=arch)
        total = sum(self.backbone.out_channels)
        self.neck = HRNetV2Neck(arch, out_channels=total, bias=True)
        self.cls = nn.Conv2d(total, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.neck(self.backbone(x))[0])


class Backbone(nn.Module):
    """HRNet alone (all four branches), as in the papers' backbone rows.

    Args:
        arch: An HRNet preset name.
    """

    def __init__(self, arch: str):
        super().__init__()
        self.backbone = HRNet(arch=arch)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self.backbone(x)


PAPER_TASKS: Dict[str, type] = {'cls': Cls, 'pose': Pose, 'seg': Seg, 'backbone': Backbone}

# The input size (H, W) at which the papers report each task's GFLOPs (pose also reports 384x288).
PAPER_SHAPES: Dict[str, Tuple[int, int]] = {'cls': (224, 224), 'pose': (256, 192), 'seg': (1024, 2048),
                                            'backbone': (224, 224)}


def build_paper_model(arch: str, task: str) -> nn.Module:
    """Builds the paper's reference network for ``task`` (``'cls'``, ``'pose'``, ``'seg'`` or ``'backbone'``).

    Build it under ``with torch.device('meta'):`` to count without allocating weights.

    Raises:
        KeyError: For an unknown task (an unknown ``arch`` raises from :class:`hrnet_mm.HRNet`).
    """
    if task not in PAPER_TASKS:
        raise KeyError(f'unknown task {task!r}; choose from {sorted(PAPER_TASKS)}')
    return PAPER_TASKS[task](arch)


__all__ = ['Cls', 'Pose', 'Seg', 'Backbone', 'PAPER_TASKS', 'PAPER_SHAPES', 'build_paper_model']
