"""The multi-resolution representation of a config's HRNet on one image, as a PNG grid.

The config's ``hrnet_mm`` backbone runs on the image (resized to ``--shape``, normalised with the config's
data_preprocessor mean/std and channel order); if the config has an ``hrnet_mm.HRNetV2Neck`` or
``hrnet_mm.HRNetV2pNeck``, its fused (first) output is shown too. Each row is one branch: its channel-mean
activation map and its ``--top`` most active channels, labelled with resolution, stride and channels. Without a
checkpoint the weights are random (BN uses batch statistics), which the title says.

Examples::

    python tools/analysis/vis_features.py configs/demo/fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py \\
        data/demo/cityscapes/leftImg8bit/val/demo/demo_000000_000000_leftImg8bit.png --out features.png
    python tools/analysis/vis_features.py configs/pose/td-hm_hrnet-w32_8xb64-210e_coco-256x192.py \\
        td-hm_hrnet-w32.pth person.jpg --out features.png
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import ToolError, build_model, default_shape, fail, load_config, parse_shape  # noqa: E402
from PIL import Image  # noqa: E402

import hrnet_mm  # noqa: E402

FUSED_NECKS = ('hrnet_mm.HRNetV2Neck', 'hrnet_mm.HRNetV2pNeck')


def load_image(path: str, shape: Tuple[int, int]) -> np.ndarray:
    """The image as RGB ``uint8`` (H, W, 3), resized to ``shape`` = (H, W)."""
    if not os.path.isfile(path):
        raise ToolError(f'image not found: {path}')
    try:
        img = Image.open(path).convert('RGB')
    except Exception as e:
        raise ToolError(f'cannot read image {path}: {e}')
    return np.array(img.resize((shape[1], shape[0]), Image.BILINEAR))


def preprocess(rgb: np.ndarray, cfg_model: dict) -> torch.Tensor:
    """``(1, 3, H, W)`` float input normalised like the config's data_preprocessor (images load as BGR in
    OpenMMLab pipelines; ``bgr_to_rgb``/``to_rgb`` flips them to RGB, otherwise the model sees BGR)."""
    pre = cfg_model.get('data_preprocessor') or {}
    to_rgb = pre.get('bgr_to_rgb', pre.get('to_rgb', False))
    img = rgb if to_rgb else rgb[..., ::-1]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None]
    mean = pre.get('mean')
    std = pre.get('std')
    if mean is not None:
        x = x - torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    if std is not None:
        x = x / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x


def features(cfg, checkpoint: Optional[str], x: torch.Tensor) -> List[Tuple[str, torch.Tensor]]:
    """``[(label, (C, h, w) map)]``: every branch of the backbone, then the fused neck output if any."""
    model = build_model(cfg)
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, hrnet_mm.HRNet):
        raise ToolError(f'the config\'s backbone is {type(backbone).__name__}, not hrnet_mm.HRNet')
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise ToolError(f'checkpoint not found: {checkpoint}')
        from mmengine.runner import load_checkpoint
        load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
        model.eval()
    else:  # random init: a fresh BN's running statistics would let activations explode; use batch statistics
        model.train()
    neck_cfg = cfg.model.get('neck')
    neck = getattr(model, 'neck', None) if isinstance(neck_cfg, dict) and neck_cfg.get('type') in FUSED_NECKS \
        else None
    # The branches themselves: all of them, whatever out_indices the task uses.
    out_indices = backbone.out_indices
    backbone.out_indices = tuple(range(len(backbone.stage_channels)))
    try:
        with torch.no_grad():
            xs = backbone(x)
            fused = neck(xs if len(out_indices) == len(xs) else tuple(xs[i] for i in out_indices)) \
                if neck is not None else None
    finally:
        backbone.out_indices = out_indices
    size = x.shape[-2:]
    maps = []
    for i, f in enumerate(xs):
        maps.append((f'branch {i + 1}: {f.shape[-2]}x{f.shape[-1]}, stride {size[0] // f.shape[-2]}, '
                     f'{f.shape[1]} ch', f[0]))
    if fused is not None:
        f = fused[0]
        maps.append((f'{type(neck).__name__} fused: {f.shape[-2]}x{f.shape[-1]}, stride {size[0] // f.shape[-2]}, '
                     f'{f.shape[1]} ch', f[0]))
    return maps


def draw(rgb: np.ndarray, maps: List[Tuple[str, torch.Tensor]], top: int, title: str, out: str) -> None:
    """Rows: input image + branches; columns: channel mean, then the ``top`` channels of largest mean |activation|."""
    cols = 1 + top
    rows = len(maps) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title(f'input {rgb.shape[0]}x{rgb.shape[1]}', fontsize=8)
    for r, (label, f) in enumerate(maps, start=1):
        f = f.float()
        axes[r, 0].imshow(f.mean(0).numpy(), cmap='viridis')
        axes[r, 0].set_title(f'{label}\nchannel mean', fontsize=7, loc='left')
        order = f.abs().mean((1, 2)).argsort(descending=True)[:top].tolist()
        for c, ch in enumerate(order, start=1):
            axes[r, c].imshow(f[ch].numpy(), cmap='magma')
            axes[r, c].set_title(f'channel {ch}', fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__[__doc__.index('Examples::'):])
    parser.add_argument('config', help='an mmengine config whose backbone is hrnet_mm.HRNet')
    parser.add_argument('paths', nargs='+', metavar='[CHECKPOINT] IMAGE', help='optional checkpoint, then the image')
    parser.add_argument('--shape', type=int, nargs='+', metavar='H [W]',
                        help='input size (default: the config\'s input size)')
    parser.add_argument('--top', type=int, default=4, help='top channels per branch (default 4)')
    parser.add_argument('--out', default='features.png', help='output PNG (default features.png)')
    args = parser.parse_args(argv)
    if len(args.paths) > 2:
        parser.error('give at most CHECKPOINT and IMAGE')
    checkpoint, image = (args.paths if len(args.paths) == 2 else (None, args.paths[0]))
    try:
        cfg = load_config(args.config)
        shape = parse_shape(args.shape) or default_shape(cfg)
        rgb = load_image(image, shape)
        x = preprocess(rgb, dict(cfg.model) | ({'data_preprocessor': cfg.data_preprocessor}
                                               if cfg.get('data_preprocessor') and not cfg.model.get(
                                                   'data_preprocessor') else {}))
        maps = features(cfg, checkpoint, x)
        weights = f'weights: {os.path.basename(checkpoint)}' if checkpoint else 'random init (no checkpoint)'
        draw(rgb, maps, max(0, args.top), f'{os.path.basename(args.config)} - {weights}', args.out)
    except ToolError as e:
        fail('vis_features.py', e)
    print(f'{args.out}: {len(maps)} maps ({weights})')
    return args.out


if __name__ == '__main__':
    main()
