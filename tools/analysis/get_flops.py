"""Parameters and FLOPs of a config's model (or of the paper's reference models), per module group.

The model is built on the ``meta`` device (no weights are allocated, nothing is downloaded, full-size inputs are
instant) and run once with a forward pass in the library's ``'tensor'`` mode; forward hooks count the
multiply-adds (MACs) of every convolution and linear layer (:func:`hrnet_mm.utils.count_macs`). GFLOPs are
reported in the HRNet papers' convention, MACs / 2**30 (normalisation, activations, pooling, upsampling and
additions are not counted). Groups: the backbone's stem (conv1/conv2 and their norms), ``layer1``, each
``transition``/``stage``, then the model's neck and head(s).

Two-stage detectors' ``'tensor'`` mode needs proposals from a real RPN, so they are counted as backbone + neck +
RPN head, then each box head (every cascade stage) on ``--num-proposals`` RoIs and each mask head on ``--num-dets``
detections (``test_cfg.rcnn.max_per_img``), as at inference. RoI extraction itself is not counted.

Examples::

    python tools/analysis/get_flops.py configs/classification/hrnet-w18_4xb32_in1k.py --shape 224
    python tools/analysis/get_flops.py configs/pose/td-hm_hrnet-w32_8xb64-210e_coco-256x192.py   # 256x192
    python tools/analysis/get_flops.py configs/detection/faster-rcnn_hrnetv2p-w18-1x_coco.py --shape 800 1333
    python tools/analysis/get_flops.py --arch w32 --task pose --shape 256 192          # the paper: 7.12 GFLOPs
    python tools/analysis/get_flops.py --arch w48 --task seg --shape 1024 2048 --json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from _common import ToolError, build_model, default_shape, fail, load_config, parse_shape  # noqa: E402

from hrnet_mm.utils import count_macs  # noqa: E402
from hrnet_mm.utils.paper_models import PAPER_SHAPES, PAPER_TASKS, build_paper_model  # noqa: E402

STEM = {'conv1', 'conv2', 'norm1', 'norm2', 'bn1', 'bn2'}


def group_of(name: str) -> str:
    """The report group of a module or parameter name (``backbone.stage3.0.branches...`` -> ``backbone.stage3``)."""
    parts = name.split('.')
    if parts[0] == 'backbone' and len(parts) > 1:
        return 'backbone.stem' if parts[1] in STEM else f'backbone.{parts[1]}'
    return parts[0]


def _group_order(model: nn.Module) -> List[str]:
    order: List[str] = []
    for name, _ in model.named_modules():
        if name and group_of(name) not in order and not name.startswith('data_preprocessor'):
            order.append(group_of(name))
    return order


def _two_stage_forward(model: nn.Module, x: torch.Tensor) -> None:
    """backbone + neck + RPN head, then every RoI head on one RoI of its extractor's output size."""
    feats = model.extract_feat(x)
    model.rpn_head(feats)
    roi = model.roi_head
    for kind in ('bbox', 'mask'):
        heads = getattr(roi, f'{kind}_head', None)
        extractors = getattr(roi, f'{kind}_roi_extractor', None)
        if heads is None:
            continue
        heads = list(heads) if isinstance(heads, nn.ModuleList) else [heads]
        if extractors is None or getattr(roi, 'share_roi_extractor', False) and kind == 'mask':
            extractors = getattr(roi, 'bbox_roi_extractor')
        extractors = list(extractors) if isinstance(extractors, nn.ModuleList) else [extractors] * len(heads)
        for head, ext in zip(heads, extractors):
            size = ext.roi_layers[0].output_size
            size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
            # count_macs counts one sample of a batch: one RoI here, scaled to num_proposals in count()
            head(torch.zeros(1, ext.out_channels, *size, device=x.device))


def forward_fn(model: nn.Module, library: Optional[str]):
    """How to run ``model`` for counting: plain (paper models), ``'tensor'`` mode, or the two-stage path."""
    if library is None:
        return None
    if library == 'mmdet' and getattr(model, 'roi_head', None) is not None:
        return _two_stage_forward
    return lambda m, x: m(x, None, mode='tensor')


def count(model: nn.Module, shape: Tuple[int, int], forward=None,
          roi_scale: Tuple[int, int] = (1, 1)) -> Dict[str, Dict[str, float]]:
    """Per-group ``{'params', 'macs'}`` plus ``'total'`` for one ``3 x H x W`` image; the MACs of the RoI heads
    (counted for one RoI) are multiplied by ``roi_scale`` = (proposals for box heads, detections for mask heads)."""
    macs = count_macs(model, (3, *shape), forward=forward, group_depth=2)
    macs.pop('total')
    scale = {'roi_head.mask_head': roi_scale[1]}
    macs = {g: n * (scale.get(g, roi_scale[0]) if g.startswith('roi_head') else 1) for g, n in macs.items()}
    rows: Dict[str, Dict[str, float]] = OrderedDict((g, {'params': 0, 'macs': 0}) for g in _group_order(model))
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        rows.setdefault(group_of(name), {'params': 0, 'macs': 0})['params'] += p.numel()
    for g, n in macs.items():
        rows.setdefault(group_of(g), {'params': 0, 'macs': 0})['macs'] += n
    rows = OrderedDict((g, r) for g, r in rows.items() if r['params'] or r['macs'])
    rows['total'] = {'params': sum(r['params'] for r in rows.values()), 'macs': sum(r['macs'] for r in rows.values())}
    return rows


def format_table(rows: Dict[str, Dict[str, float]], title: str) -> str:
    """The counts as a text table: group, params, MACs (G = 1e9), GFLOPs (MACs / 2**30)."""
    width = max(len(g) for g in rows) + 2
    lines = [title, f'{"group":<{width}}{"params":>14}{"MACs (G)":>12}{"GFLOPs":>10}', '-' * (width + 36)]
    for g, r in rows.items():
        if g == 'total':
            lines.append('-' * (width + 36))
        lines.append(f'{g:<{width}}{r["params"]:>14,}{r["macs"] / 1e9:>12.3f}{r["macs"] / 2 ** 30:>10.2f}')
    lines.append('GFLOPs in the HRNet papers\' convention: conv + linear multiply-adds / 2**30.')
    return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__[__doc__.index('Examples::'):])
    parser.add_argument('config', nargs='?', help='an mmengine config (mmdet/mmseg/mmpose/mmpretrain)')
    parser.add_argument('--shape', type=int, nargs='+', metavar='H [W]',
                        help='input height (and width); default: the config\'s (or the paper\'s) input size')
    parser.add_argument('--arch', help='a paper reference model instead of a config: HRNet preset, e.g. w32')
    parser.add_argument('--task', choices=sorted(PAPER_TASKS), help='the paper model for --arch')
    parser.add_argument('--num-proposals', type=int, default=1000,
                        help='RoIs per image for the box heads of two-stage detectors (default 1000)')
    parser.add_argument('--num-dets', type=int, default=None,
                        help='detections per image for the mask heads (default: test_cfg.rcnn.max_per_img, or 100)')
    parser.add_argument('--json', action='store_true', help='print JSON instead of the table')
    args = parser.parse_args(argv)
    if (args.config is None) == (args.arch is None):
        parser.error('give either CONFIG or --arch (with --task)')
    if args.arch is not None and args.task is None:
        parser.error('--arch needs --task (one of %s)' % ', '.join(sorted(PAPER_TASKS)))
    return args


def main(argv=None) -> Dict[str, object]:
    args = parse_args(argv)
    prog = 'get_flops.py'
    try:
        shape = parse_shape(args.shape)
        if args.arch is not None:
            shape = shape or PAPER_SHAPES[args.task]
            try:
                with torch.device('meta'):
                    model = build_paper_model(args.arch, args.task)
            except Exception as e:
                raise ToolError(f'cannot build the paper model {args.arch!r}: {e}'.splitlines()[0])
            source, library = f'paper {args.task} model, HRNet-{args.arch}', None
        else:
            cfg = load_config(args.config)
            shape = shape or default_shape(cfg)
            model = build_model(cfg, device='meta')
            source, library = args.config, cfg.default_scope
        try:
            two_stage = library == 'mmdet' and getattr(model, 'roi_head', None) is not None
            dets = args.num_dets or (cfg.model.get('test_cfg') or {}).get('rcnn', {}).get('max_per_img', 100) \
                if two_stage else 1
            rows = count(model, shape, forward_fn(model, library), (args.num_proposals, dets) if two_stage else (1, 1))
        except Exception as e:
            raise ToolError(f'forward pass failed at {shape[0]}x{shape[1]}: {type(e).__name__}: {e}'.splitlines()[0])
    except ToolError as e:
        fail(prog, e)
    result = {'model': source, 'input_shape': [3, *shape],
              'groups': {g: {'params': int(r['params']), 'macs': int(r['macs']), 'gflops': r['macs'] / 2 ** 30}
                         for g, r in rows.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(rows, f'{source}  input 3x{shape[0]}x{shape[1]}'))
    return result


if __name__ == '__main__':
    main()
