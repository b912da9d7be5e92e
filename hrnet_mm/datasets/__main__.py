"""``python -m hrnet_mm.datasets {coco,coco-keypoints,cityscapes,imagenet} OUT_DIR`` writes one synthetic dataset
in its real on-disk format; ``python -m hrnet_mm.datasets all OUT_ROOT`` writes all four under
``OUT_ROOT/data/demo/{coco,coco_keypoints,cityscapes,imagenet}``, the data roots of ``configs/demo``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

from .synthetic import make_cityscapes_seg, make_coco_detection, make_coco_keypoints, make_imagenet_folder

# kind: (generator, folder under data/demo, default train count, default val count, what a count means)
KINDS: Dict[str, Tuple[Callable, str, int, int, str]] = {
    'coco': (make_coco_detection, 'coco', 16, 8, 'images'),
    'coco-keypoints': (make_coco_keypoints, 'coco_keypoints', 128, 16, 'images'),
    'cityscapes': (make_cityscapes_seg, 'cityscapes', 48, 12, 'images'),
    'imagenet': (make_imagenet_folder, 'imagenet', 100, 10, 'images per class'),
}


def write(kind: str, out_dir: str, train: Optional[int] = None, val: Optional[int] = None, seed: int = 0):
    """Writes one dataset kind with its default split sizes (or the given ones).

    Args:
        kind: One of :data:`KINDS`.
        out_dir: Output folder of that dataset.
        train: Training count (see :data:`KINDS`); ``None`` for the default.
        val: Validation count; ``None`` for the default.
        seed: Seed of the generator.

    Returns:
        What the generator returns.
    """
    fn, _, d_train, d_val, _ = KINDS[kind]
    splits = {'train': d_train if train is None else train, 'val': d_val if val is None else val}
    return fn(out_dir, splits, seed=seed)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m hrnet_mm.datasets', description=__doc__)
    parser.add_argument('kind', choices=[*KINDS, 'all'],
                        help='coco: COCO instances (boxes and polygon masks); coco-keypoints: COCO person '
                             'keypoints; cityscapes: Cityscapes trainId segmentation; imagenet: class folders; '
                             'all: the four under OUT_DIR/data/demo/')
    parser.add_argument('out_dir')
    parser.add_argument('--train', type=int, default=None,
                        help='training images (per class for imagenet); default per kind: '
                             + ', '.join(f'{k} {v[2]}' for k, v in KINDS.items()))
    parser.add_argument('--val', type=int, default=None, help='validation images (per class for imagenet)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind == 'all':
        targets = [(k, os.path.join(args.out_dir, 'data', 'demo', v[1])) for k, v in KINDS.items()]
    else:
        targets = [(args.kind, args.out_dir)]
    for index, (kind, out_dir) in enumerate(targets, 1):
        t0 = time.time()
        result = write(kind, out_dir, args.train, args.val, args.seed)
        sizes = {'train': args.train if args.train is not None else KINDS[kind][2],
                 'val': args.val if args.val is not None else KINDS[kind][3]}
        counts = []
        for split, value in result.items():
            if isinstance(value, list):
                counts.append(f'{kind} {split}: {len(value)} images with label maps')
            elif isinstance(value, int):
                counts.append(f'{kind} {split}: {value} images')
            else:
                counts.append(f'{kind} {split}: {sizes[split]} images')
        step = f'[{index}/{len(targets)}] ' if len(targets) > 1 else ''
        print(f'{step}{"; ".join(counts)} ({time.time() - t0:.1f}s, in {out_dir})', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
