"""``python -m hrnet_mm.datasets KIND OUT_DIR`` writes one synthetic dataset in its real on-disk format (KIND:
coco, coco-keypoints, cityscapes, imagenet, coco-keypoints-multi, coco-people, cofw, onehand10k);
``python -m hrnet_mm.datasets all OUT_ROOT`` writes the first four under
``OUT_ROOT/data/demo/{coco,coco_keypoints,cityscapes,imagenet}``, the data roots of the four ``make demo``
configs. Every kind's folder under ``data/demo/`` is the data root of its ``configs/demo`` config."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

from .landmarks import make_face_landmarks, make_hand_keypoints
from .synthetic import make_cityscapes_seg, make_coco_detection, make_coco_keypoints, make_imagenet_folder


def make_coco_keypoints_multi(root: str, splits: Dict[str, int], seed: int = 0):
    """COCO person keypoints with two people in every 128x160 image (bottom-up pose)."""
    return make_coco_keypoints(root, splits, size=(128, 160), seed=seed, min_persons=2, max_persons=2,
                               person_height=(70, 110))


def make_coco_people(root: str, splits: Dict[str, int], seed: int = 0):
    """COCO person keypoints with two to four people in every 160x320 image: the scenes of the detector-to-pose
    pipeline (a person detector trains on their boxes; a top-down pose model trained on ``coco-keypoints`` runs on
    each box it finds)."""
    return make_coco_keypoints(root, splits, size=(160, 320), seed=seed, min_persons=2, max_persons=4,
                               person_height=(80, 120))


# kind: (generator, folder under data/demo, default train count, default val count, what a count means, split
# names: the set's own (COFW and OneHand10K call their second split "test"))
KINDS: Dict[str, Tuple[Callable, str, int, int, str, Tuple[str, str]]] = {
    'coco': (make_coco_detection, 'coco', 48, 8, 'images', ('train', 'val')),
    'coco-keypoints': (make_coco_keypoints, 'coco_keypoints', 128, 16, 'images', ('train', 'val')),
    'cityscapes': (make_cityscapes_seg, 'cityscapes', 48, 12, 'images', ('train', 'val')),
    'imagenet': (make_imagenet_folder, 'imagenet', 100, 10, 'images per class', ('train', 'val')),
    'coco-keypoints-multi': (make_coco_keypoints_multi, 'coco_keypoints_multi', 64, 16, 'images', ('train', 'val')),
    'coco-people': (make_coco_people, 'coco_people', 48, 8, 'images', ('train', 'val')),
    'cofw': (make_face_landmarks, 'cofw', 96, 16, 'images', ('train', 'test')),
    'onehand10k': (make_hand_keypoints, 'onehand10k', 96, 16, 'images', ('train', 'test')),
}
ALL = ('coco', 'coco-keypoints', 'cityscapes', 'imagenet')  # what `all` writes: the data of `make demo`


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
    fn, _, d_train, d_val, _, (train_name, val_name) = KINDS[kind]
    splits = {train_name: d_train if train is None else train, val_name: d_val if val is None else val}
    return fn(out_dir, splits, seed=seed)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m hrnet_mm.datasets', description=__doc__)
    parser.add_argument('kind', choices=[*KINDS, 'all'],
                        help='coco: COCO instances (boxes and polygon masks); coco-keypoints: COCO person '
                             'keypoints; cityscapes: Cityscapes trainId segmentation; imagenet: class folders; '
                             'coco-keypoints-multi: COCO person keypoints, 2 people an image; coco-people: COCO person '
                             'keypoints, 2-4 people in a 160x320 scene; cofw: COFW face '
                             'landmarks; onehand10k: OneHand10K hand keypoints; all: the first four under '
                             'OUT_DIR/data/demo/')
    parser.add_argument('out_dir')
    parser.add_argument('--train', type=int, default=None,
                        help='training images (per class for imagenet); default per kind: '
                             + ', '.join(f'{k} {v[2]}' for k, v in KINDS.items()))
    parser.add_argument('--val', type=int, default=None, help='validation images (per class for imagenet)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind == 'all':
        targets = [(k, os.path.join(args.out_dir, 'data', 'demo', KINDS[k][1])) for k in ALL]
    else:
        targets = [(args.kind, args.out_dir)]
    for index, (kind, out_dir) in enumerate(targets, 1):
        t0 = time.time()
        result = write(kind, out_dir, args.train, args.val, args.seed)
        train_name, val_name = KINDS[kind][5]
        sizes = {train_name: args.train if args.train is not None else KINDS[kind][2],
                 val_name: args.val if args.val is not None else KINDS[kind][3]}
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
