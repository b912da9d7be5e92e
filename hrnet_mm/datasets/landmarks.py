"""Small, learnable landmark datasets in the formats of mmpose's face and hand sets.

:func:`make_face_landmarks` writes a COFW set (29 face landmarks; mmpose's ``COFWDataset``:
``annotations/cofw_{train,test}.json``, images under ``images/``) and :func:`make_hand_keypoints` a OneHand10K set
(21 hand keypoints; ``OneHand10KDataset``: ``annotations/onehand10k_{train,test}.json``, file names relative to the
data root). Both are COCO-style keypoint files: one object per image with its ``bbox`` (the landmarks' tight box
plus a margin), ``keypoints`` as ``[x, y, v]`` triples, ``num_keypoints``, ``area`` and ``iscrowd``.

Each image shows one shape (a face disc, a hand) placed with a random similarity transform (rotation, scale,
position) and small per-landmark jitter, with a coloured marker on every landmark. Markers of landmarks that
mmpose's flip augmentation swaps share a colour, so a mirrored image is labelled consistently; the model must tell
them apart by their place on the shape. A predictor of the mean shape inside the box misses most landmarks, because
of the rotations (see the end-to-end tests).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

# COFW's flip pairs (mmpose's configs/_base_/datasets/cofw.py): landmarks 20, 21 and 24..28 lie on the midline.
COFW_FLIP_PAIRS = ((0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19),
                   (22, 23))
COFW_NUM_KEYPOINTS = 29
HAND_NUM_KEYPOINTS = 21  # wrist, then four joints per finger from the thumb to the little finger


def _face_template(seed: int = 7) -> Tuple[np.ndarray, List[int]]:
    """Landmarks ``(29, 2)`` in a unit face (x right, y down, centre 0), mirror-symmetric by COFW's flip pairs,
    and each landmark's colour group (shared by a flip pair)."""
    rng = np.random.RandomState(seed)
    pts = np.zeros((COFW_NUM_KEYPOINTS, 2))
    group = [-1] * COFW_NUM_KEYPOINTS
    for g, (a, b) in enumerate(COFW_FLIP_PAIRS):
        x, y = rng.uniform(0.12, 0.42), rng.uniform(-0.4, 0.4)
        pts[a], pts[b] = (-x, y), (x, y)
        group[a] = group[b] = g
    singles = [i for i in range(COFW_NUM_KEYPOINTS) if group[i] < 0]
    for g, (i, y) in enumerate(zip(singles, np.linspace(-0.45, 0.45, len(singles))), len(COFW_FLIP_PAIRS)):
        pts[i] = (0.0, y)
        group[i] = g
    return pts, group


def _hand_template(rng: np.random.RandomState) -> np.ndarray:
    """Keypoints ``(21, 2)`` of a hand with unit length from wrist to fingertips (wrist at the origin, fingers up),
    each finger bent at random."""
    pts = np.zeros((HAND_NUM_KEYPOINTS, 2))
    bases = (-0.55, -0.25, 0.0, 0.22, 0.42)  # knuckle x of thumb .. little finger
    lengths = (0.55, 0.62, 0.68, 0.62, 0.5)
    for f in range(5):
        direction = math.radians(-50 + 25 * f + rng.uniform(-8, 8))
        start = np.array([bases[f] * 0.6, -0.35 if f else -0.15])
        bend = math.radians(rng.uniform(0, 35))
        p = start
        for j in range(4):
            a = direction + (bend * j if f else -bend * j)
            p = p + lengths[f] / 4 * np.array([math.sin(a), -math.cos(a)])
            pts[1 + 4 * f + j] = p if j else start
    return pts


def _palette(n: int) -> List[Tuple[int, int, int]]:
    """``n`` well separated saturated colours."""
    import colorsys
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.9, 1.0)) for k in range(n)]


def _transform(rng: np.random.RandomState, pts: np.ndarray, size: Tuple[int, int], scale: float,
               max_rotation: float) -> np.ndarray:
    h, w = size
    angle = math.radians(rng.uniform(-max_rotation, max_rotation))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    s = scale * min(h, w) * rng.uniform(0.8, 1.1)
    out = pts @ rot.T * s
    lo, hi = out.min(0), out.max(0)
    margin = 3.0
    cx = rng.uniform(margin - lo[0], w - margin - hi[0]) if w - hi[0] - margin > margin - lo[0] else w / 2
    cy = rng.uniform(margin - lo[1], h - margin - hi[1]) if h - hi[1] - margin > margin - lo[1] else h / 2
    return out + [cx, cy]


def _annotation(image_id: int, pts: np.ndarray, size: Tuple[int, int]) -> dict:
    h, w = size
    lo, hi = pts.min(0), pts.max(0)
    pad = 0.1 * (hi - lo).max()
    x0, y0 = max(0.0, lo[0] - pad), max(0.0, lo[1] - pad)
    x1, y1 = min(float(w), hi[0] + pad), min(float(h), hi[1] + pad)
    keypoints = []
    for x, y in pts:
        keypoints += [round(float(x), 2), round(float(y), 2), 2]
    return dict(id=image_id, image_id=image_id, category_id=1, iscrowd=0, num_keypoints=len(pts),
                bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                area=round((x1 - x0) * (y1 - y0), 2), keypoints=keypoints)


def _background(rng: np.random.RandomState, h: int, w: int) -> np.ndarray:
    base = rng.randint(20, 110, size=3).astype(np.float32)
    return np.clip(base + rng.normal(0, 10, size=(h, w, 3)), 0, 255).astype(np.uint8)


# draws one image on a PIL canvas of the given size and returns its landmarks (K, 2)
Painter = Callable[[np.random.RandomState, Any, Tuple[int, int]], np.ndarray]


def _write_set(root: str, splits: Dict[str, int], size: Tuple[int, int], seed: int, paint: Painter, prefix: str,
               file_name: Callable[[str, int], str], ann_name: str, category: str, names: Sequence[str]
               ) -> Dict[str, str]:
    """Writes every split: images at ``root/<prefix><file_name(split, i)>`` (``prefix``: the dataset's
    ``data_prefix``), COCO-style keypoint annotations at ``root/annotations/<ann_name>_<split>.json``."""
    from PIL import Image, ImageDraw

    h, w = size
    out = {}
    for s_index, (split, count) in enumerate(sorted(splits.items())):
        rng = np.random.RandomState(seed * 1000 + 500 + s_index)
        images, annotations = [], []
        for i in range(count):
            canvas = Image.fromarray(_background(rng, h, w))
            pts = paint(rng, ImageDraw.Draw(canvas), size)
            name = file_name(split, i)
            path = os.path.join(root, prefix, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            canvas.save(path, quality=95)
            images.append(dict(id=i + 1, file_name=name, height=h, width=w))
            annotations.append(_annotation(i + 1, pts, size))
        path = os.path.join(root, 'annotations', f'{ann_name}_{split}.json')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=[dict(id=1, name=category, keypoints=list(names), skeleton=[])]), f)
        out[split] = path
    return out


def make_face_landmarks(root: str, splits: Dict[str, int] = None, size: Tuple[int, int] = (96, 96),
                        seed: int = 0, max_rotation: float = 40.0) -> Dict[str, str]:
    """Writes a COFW-format face landmark set: ``root/images/<split>_<i>.jpg`` and
    ``root/annotations/cofw_<split>.json``.

    Args:
        root: Output folder (the config's ``data_root``).
        splits: ``{split name: number of images}``; default ``{'train': 96, 'test': 16}``.
        size: ``(height, width)`` of every image.
        seed: Seed of the generator; the same seed writes the same files.
        max_rotation: Faces are rotated by up to this many degrees either way.

    Returns:
        ``{split: annotation file path}``.
    """
    template, group = _face_template()
    colors = _palette(max(group) + 1)

    def paint(rng: np.random.RandomState, draw: Any, size: Tuple[int, int]) -> np.ndarray:
        pts = _transform(rng, template + rng.normal(0, 0.015, template.shape), size, 0.7, max_rotation)
        centre = pts.mean(0)
        radius = 1.15 * np.linalg.norm(pts - centre, axis=1).max()
        skin = tuple(int(v) for v in rng.randint(150, 220, size=3))
        draw.ellipse([centre[0] - radius, centre[1] - radius * 1.1, centre[0] + radius, centre[1] + radius * 1.1],
                     fill=skin)
        a, b = COFW_FLIP_PAIRS[0]  # a dark bar between the first pair shows which way is up
        draw.line([tuple(pts[a]), tuple(pts[b])], fill=(40, 30, 30), width=2)
        r = max(1.5, 0.025 * min(size))
        for k, (x, y) in enumerate(pts):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colors[group[k]])
        return pts

    return _write_set(root, splits or {'train': 96, 'test': 16}, size, seed, paint,
                      'images/', lambda split, i: f'{split}_{i:05d}.jpg', 'cofw', 'face',
                      [f'kpt-{k}' for k in range(COFW_NUM_KEYPOINTS)])


def make_hand_keypoints(root: str, splits: Dict[str, int] = None, size: Tuple[int, int] = (96, 96),
                        seed: int = 0, max_rotation: float = 60.0) -> Dict[str, str]:
    """Writes a OneHand10K-format hand keypoint set: ``root/<split>/<i>.jpg`` and
    ``root/annotations/onehand10k_<split>.json`` (file names relative to ``root``, as OneHand10K's are).

    Args:
        root: Output folder (the config's ``data_root``).
        splits: ``{split name: number of images}``; default ``{'train': 96, 'test': 16}``.
        size: ``(height, width)`` of every image.
        seed: Seed of the generator; the same seed writes the same files.
        max_rotation: Hands are rotated by up to this many degrees either way.

    Returns:
        ``{split: annotation file path}``.
    """
    finger_colors = _palette(5)

    def paint(rng: np.random.RandomState, draw: Any, size: Tuple[int, int]) -> np.ndarray:
        pts = _transform(rng, _hand_template(rng), size, 0.55, max_rotation)
        skin = tuple(int(v) for v in rng.randint(150, 220, size=3))
        draw.polygon([tuple(pts[0])] + [tuple(pts[1 + 4 * f]) for f in range(5)], fill=skin)  # the palm
        for f in range(5):
            chain = [tuple(pts[0] if j < 0 else pts[1 + 4 * f + j]) for j in range(-1, 4)]
            draw.line(chain, fill=skin, width=max(3, int(0.06 * min(size))))
        r = max(1.5, 0.022 * min(size))
        draw.ellipse([pts[0][0] - r, pts[0][1] - r, pts[0][0] + r, pts[0][1] + r], fill=(255, 255, 255))
        for f in range(5):
            for j in range(4):
                x, y = pts[1 + 4 * f + j]
                shade = 0.45 + 0.55 * (j + 1) / 4  # darker towards the knuckle
                draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c * shade) for c in finger_colors[f]))
        return pts

    fingers = ('thumb', 'forefinger', 'middle_finger', 'ring_finger', 'pinky_finger')
    return _write_set(root, splits or {'train': 96, 'test': 16}, size, seed, paint,
                      '', lambda split, i: f'{split}/{i:05d}.jpg', 'onehand10k', 'hand',
                      ['wrist'] + [f'{finger}{j}' for finger in fingers for j in range(1, 5)])
