"""Small, deterministic, learnable datasets in the real on-disk formats the task runners read.

:func:`make_coco_detection` writes a COCO instance set (JPEG images, ``annotations/*.json`` with boxes and
polygon masks) of bright squares and discs on a textured background: two classes with clear structure that
a small HRNet learns in minutes on a CPU.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

DET_CLASSES = ('square', 'disc')


def _background(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    base = rng.randint(30, 90, size=3).astype(np.float32)
    noise = rng.normal(0, 12, size=(h, w, 3)).astype(np.float32)
    return np.clip(base + noise, 0, 255)


def _disc_polygon(cx: float, cy: float, r: float, n: int = 16) -> List[float]:
    pts = []
    for k in range(n):
        a = 2 * math.pi * k / n
        pts += [round(cx + r * math.cos(a), 2), round(cy + r * math.sin(a), 2)]
    return pts


def _draw_objects(rng, img, max_objects, min_size, max_size):
    h, w = img.shape[:2]
    objects = []
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(rng.randint(1, max_objects + 1)):
        label = rng.randint(len(DET_CLASSES))
        size = rng.randint(min_size, max_size + 1)
        x0 = rng.randint(0, w - size)
        y0 = rng.randint(0, h - size)
        color = rng.randint(150, 256, size=3).astype(np.float32)
        if DET_CLASSES[label] == 'square':
            img[y0:y0 + size, x0:x0 + size] = color
            poly = [x0, y0, x0 + size, y0, x0 + size, y0 + size, x0, y0 + size]
            area = float(size * size)
        else:
            r = size / 2
            cx, cy = x0 + r, y0 + r
            mask = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= r * r
            img[mask] = color
            poly = _disc_polygon(cx, cy, r)
            area = float(mask.sum())
        objects.append(dict(label=label, bbox=[float(x0), float(y0), float(size), float(size)],
                            segmentation=[[float(v) for v in poly]], area=area))
    return objects


def _write_image(path: str, img: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(img.astype(np.uint8)).save(path, quality=95)


def make_coco_detection(root: str, splits: Dict[str, int] = None, size: Tuple[int, int] = (128, 160),
                        seed: int = 0, max_objects: int = 3, object_size: Sequence[int] = (24, 56)) -> Dict[str, str]:
    """Writes ``root/{split}/*.jpg`` and ``root/annotations/instances_{split}.json`` for each split.

    Args:
        root: Output folder.
        splits: ``{split name: number of images}``; default ``{'train': 16, 'val': 8}``.
        size: ``(height, width)`` of every image.
        seed: Seed of the generator; the same seed writes the same files.
        max_objects: Objects per image (1..max_objects).
        object_size: Range of object side lengths in pixels.

    Returns:
        ``{split: annotation file path}``.
    """
    splits = splits or {'train': 16, 'val': 8}
    h, w = size
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    out = {}
    for s_index, (split, count) in enumerate(sorted(splits.items())):
        rng = np.random.RandomState(seed * 1000 + s_index)
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img = _background(rng, h, w)
            objects = _draw_objects(rng, img, max_objects, *object_size)
            name = f'{i:06d}.jpg'
            _write_image(os.path.join(root, split, name), img)
            images.append(dict(id=i + 1, file_name=name, height=h, width=w))
            for obj in objects:
                annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, category_id=obj['label'] + 1,
                                        bbox=obj['bbox'], area=obj['area'], segmentation=obj['segmentation'],
                                        iscrowd=0))
        ann = dict(images=images, annotations=annotations,
                   categories=[dict(id=k + 1, name=n) for k, n in enumerate(DET_CLASSES)])
        path = os.path.join(root, 'annotations', f'instances_{split}.json')
        with open(path, 'w') as f:
            json.dump(ann, f)
        out[split] = path
    return out
