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
        splits: ``{split name: number of images}``; default ``{'train': 48, 'val': 8}``.
        size: ``(height, width)`` of every image.
        seed: Seed of the generator; the same seed writes the same files.
        max_objects: Objects per image (1..max_objects).
        object_size: Range of object side lengths in pixels.

    Returns:
        ``{split: annotation file path}``.
    """
    splits = splits or {'train': 48, 'val': 8}
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


# --------------------------------------------------------------------------------------------------------------
# COCO person keypoints
# --------------------------------------------------------------------------------------------------------------

COCO_KEYPOINTS = ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'left_shoulder', 'right_shoulder',
                  'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist', 'left_hip', 'right_hip', 'left_knee',
                  'right_knee', 'left_ankle', 'right_ankle')
# 1-based keypoint indices, as in person_keypoints_*.json of COCO 2017.
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
# One marker colour per joint type; left and right share it, so a horizontally flipped figure (with the
# left/right labels swapped, as mmpose's RandomFlip does) is still a figure of the same distribution.
_JOINT_COLORS = dict(nose=(255, 40, 40), eye=(30, 30, 200), ear=(250, 230, 0), shoulder=(0, 230, 0),
                     elbow=(0, 230, 230), wrist=(240, 0, 240), hip=(255, 140, 0), knee=(140, 60, 255),
                     ankle=(255, 255, 255))


def _joint_color(name: str) -> Tuple[int, int, int]:
    return _JOINT_COLORS[name.split('_')[-1]]


def _stick_figure(rng: np.random.RandomState, cx: float, top: float, height: float) -> np.ndarray:
    """Keypoints ``(17, 2)`` of an upright person facing the camera (its left side on the image's right)."""
    h = height
    wscale = rng.uniform(0.85, 1.15)
    kp = np.zeros((17, 2), np.float64)
    head = np.array([cx + rng.uniform(-0.02, 0.02) * h, top + 0.08 * h])
    kp[0] = head + [0, 0.025 * h]
    for side, (eye, ear) in ((1, (1, 3)), (-1, (2, 4))):
        kp[eye] = head + [side * 0.028 * h, -0.012 * h]
        kp[ear] = head + [side * 0.06 * h, 0.0]
    for side, (sho, elb, wri, hip, kne, ank) in ((1, (5, 7, 9, 11, 13, 15)), (-1, (6, 8, 10, 12, 14, 16))):
        kp[sho] = [cx + side * 0.12 * h * wscale, top + 0.2 * h]
        kp[hip] = [cx + side * 0.075 * h * wscale, top + 0.52 * h]
        a1 = math.radians(rng.uniform(-5, 110))  # angle from hanging down, outwards
        a2 = a1 + math.radians(rng.uniform(-20, 80))
        kp[elb] = kp[sho] + 0.16 * h * np.array([side * math.sin(a1), math.cos(a1)])
        kp[wri] = kp[elb] + 0.14 * h * np.array([side * math.sin(a2), math.cos(a2)])
        b1 = math.radians(rng.uniform(0, 30))
        b2 = b1 + math.radians(rng.uniform(-20, 20))
        kp[kne] = kp[hip] + 0.23 * h * np.array([side * math.sin(b1), math.cos(b1)])
        kp[ank] = kp[kne] + 0.23 * h * np.array([side * math.sin(b2), math.cos(b2)])
    return kp


def _draw_figure(draw, rng: np.random.RandomState, kp: np.ndarray, visible: np.ndarray, height: float) -> None:
    """Draws a 'clothed' figure (thick limbs, torso, head) and coloured markers on its visible joints."""
    body = tuple(int(v) for v in rng.randint(70, 150, size=3))
    skin = tuple(int(v) for v in rng.randint(150, 210, size=3))
    limb_w = max(2, int(round(0.07 * height)))
    for a, b in ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16)):
        draw.line([tuple(kp[a]), tuple(kp[b])], fill=body, width=limb_w)
    draw.polygon([tuple(kp[i]) for i in (5, 6, 12, 11)], fill=body)
    hx, hy = kp[0][0], kp[0][1] - 0.025 * height
    r = 0.075 * height
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=skin)
    mr = max(1.5, 0.028 * height)
    for k in range(17):
        if visible[k] != 2:
            continue
        rr = mr * (0.6 if k <= 4 else 1.0)
        x, y = kp[k]
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=_joint_color(COCO_KEYPOINTS[k]))


def make_coco_keypoints(root: str, splits: Dict[str, int] = None, size: Tuple[int, int] = (128, 160),
                        seed: int = 0, max_persons: int = 2, person_height: Sequence[int] = (80, 120),
                        occluded_prob: float = 0.05, min_persons: int = 1) -> Dict[str, str]:
    """Writes COCO person keypoints: ``root/{split}/*.jpg`` and ``root/annotations/person_keypoints_{split}.json``.

    Every image holds ``min_persons``..``max_persons`` upright, non-overlapping figures facing the camera, side by
    side (several per image for bottom-up models), with the 17 COCO
    keypoints (COCO names and skeleton) marked by a colour per joint type. Each keypoint is labelled
    visible (``v=2``), or with probability ``occluded_prob`` labelled but not visible (``v=1``, no marker).
    ``area`` is the pixel area of the drawn figure (COCO's segment area) and ``bbox`` its tight box.

    Args:
        root: Output folder.
        splits: ``{split name: number of images}``; default ``{'train': 128, 'val': 16}``.
        size: ``(height, width)`` of every image.
        seed: Seed of the generator; the same seed writes the same files.
        max_persons: Most persons per image.
        person_height: Range of the figures' heights in pixels (clipped to the image height).
        occluded_prob: Probability that a keypoint is labelled ``v=1`` and drawn without its marker.
        min_persons: Fewest persons per image.

    Returns:
        ``{split: annotation file path}``.
    """
    from PIL import Image, ImageDraw

    if not 1 <= min_persons <= max_persons:
        raise ValueError(f'make_coco_keypoints: need 1 <= min_persons <= max_persons, got {min_persons} and '
                         f'{max_persons}')
    splits = splits or {'train': 128, 'val': 16}
    h, w = size
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    out = {}
    for s_index, (split, count) in enumerate(sorted(splits.items())):
        rng = np.random.RandomState(seed * 1000 + 100 + s_index)
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            canvas = Image.fromarray(_background(rng, h, w).astype(np.uint8))
            n = rng.randint(min_persons, max_persons + 1)
            slot_w = w / n
            for p in range(n):
                # capped so that the widest pose (arms sideways, half width < 0.45 * height) fits its slot
                ph = float(min(rng.uniform(*person_height), h - 4, slot_w / 0.9))
                half = 0.45 * ph
                lo, hi = p * slot_w + half, (p + 1) * slot_w - half
                cx = rng.uniform(lo, hi) if hi > lo else (p + 0.5) * slot_w
                top = rng.uniform(1, h - ph - 1)
                kp = _stick_figure(rng, cx, top, ph)
                inside = (kp[:, 0] >= 0) & (kp[:, 0] < w) & (kp[:, 1] >= 0) & (kp[:, 1] < h)
                vis = np.where(rng.uniform(size=17) < occluded_prob, 1, 2) * inside
                layer = Image.new('RGB', (w, h), (0, 0, 0))
                _draw_figure(ImageDraw.Draw(layer), np.random.RandomState(rng.randint(2 ** 31)), kp, vis, ph)
                mask = np.asarray(layer).any(axis=2)
                canvas.paste(layer, (0, 0), Image.fromarray((mask * 255).astype(np.uint8)))
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                keypoints = []
                for k in range(17):
                    if vis[k]:
                        keypoints += [round(float(kp[k, 0]), 2), round(float(kp[k, 1]), 2), int(vis[k])]
                    else:
                        keypoints += [0, 0, 0]
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=1, iscrowd=0,
                    bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)], area=float(mask.sum()),
                    keypoints=keypoints, num_keypoints=int((vis > 0).sum())))
            name = f'{i:06d}.jpg'
            canvas.save(os.path.join(root, split, name), quality=95)
            images.append(dict(id=i + 1, file_name=name, height=h, width=w))
        ann = dict(images=images, annotations=annotations,
                   categories=[dict(id=1, name='person', supercategory='person', keypoints=list(COCO_KEYPOINTS),
                                    skeleton=COCO_SKELETON)])
        path = os.path.join(root, 'annotations', f'person_keypoints_{split}.json')
        with open(path, 'w') as f:
            json.dump(ann, f)
        out[split] = path
    return out


# --------------------------------------------------------------------------------------------------------------
# Cityscapes semantic segmentation
# --------------------------------------------------------------------------------------------------------------

CITYSCAPES_CLASSES = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
                      'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
                      'motorcycle', 'bicycle')
# trainIds drawn by make_cityscapes_seg (the other 11 Cityscapes classes never occur).
SEG_TRAIN_IDS = dict(road=0, sidewalk=1, building=2, pole=5, vegetation=8, terrain=9, sky=10, car=13)
SEG_IGNORE = 255
_SEG_COLORS = {0: (90, 90, 95), 1: (175, 140, 150), 2: (150, 110, 70), 5: (230, 230, 60), 8: (40, 120, 40),
               9: (160, 200, 90), 10: (110, 170, 235), 13: (30, 40, 140), SEG_IGNORE: (10, 10, 10)}
_CITIES = ('aachen', 'bremen', 'zurich')


def _street_scene(rng: np.random.RandomState, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Label map (trainIds, 255 for the ego vehicle) and image of one street scene."""
    ids = SEG_TRAIN_IDS
    label = np.full((h, w), ids['sky'], np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(h * rng.uniform(0.38, 0.52))
    # buildings and trees standing on the horizon
    x = int(rng.randint(-10, 5))
    while x < w:
        bw = int(rng.randint(w // 8, w // 3))
        if rng.uniform() < 0.3:
            r = bw / 2
            cy = horizon - rng.uniform(0.6, 1.2) * r
            label[((xx - x - r) ** 2 + (yy - cy) ** 2 <= r * r) | ((np.abs(xx - x - r) < 2) & (yy >= cy) &
                                                                   (yy < horizon))] = ids['vegetation']
        else:
            top = int(horizon - rng.uniform(0.35, 0.95) * horizon)
            label[top:horizon, max(x, 0):x + bw] = ids['building']
        x += bw + int(rng.randint(0, w // 10))
    # road: a trapezoid to a vanishing point, sidewalks beside it, grass (terrain) beyond
    vx = w * rng.uniform(0.35, 0.65)
    t = np.clip((yy - horizon) / max(h - horizon, 1), 0, 1)
    half_road = t * w * rng.uniform(0.45, 0.7)
    half_walk = half_road + t * w * rng.uniform(0.2, 0.4)
    below = yy >= horizon
    label[below] = ids['terrain']
    label[below & (np.abs(xx - vx) <= half_walk)] = ids['sidewalk']
    label[below & (np.abs(xx - vx) <= half_road)] = ids['road']
    # poles on the sidewalk
    for _ in range(rng.randint(0, 3)):
        side = 1 if rng.uniform() < 0.5 else -1
        py = int(rng.uniform(horizon + 0.3 * (h - horizon), h - 4))
        tt = (py - horizon) / max(h - horizon, 1)
        px = int(vx + side * (half_road[py, 0] + 0.5 * (half_walk[py, 0] - half_road[py, 0])))
        pw = max(1, int(round(1 + 3 * tt)))
        label[max(int(py - (0.5 + tt) * h * 0.6), 0):py, max(px - pw, 0):max(px + pw, 0)] = ids['pole']
    # cars on the road, nearer ones larger and lower
    for _ in range(rng.randint(1, 4)):
        cy = int(rng.uniform(horizon + 4, h - 6))
        tt = (cy - horizon) / max(h - horizon, 1)
        cw = max(6, int(w * (0.08 + 0.2 * tt)))
        ch = max(4, int(cw * rng.uniform(0.45, 0.6)))
        cx = int(vx + rng.uniform(-0.8, 0.8) * half_road[cy, 0])
        label[max(cy - ch, 0):cy, max(cx - cw // 2, 0):max(cx + cw // 2, 0)] = ids['car']
    # the ego vehicle's hood at the bottom: not a class, ignored (255) as in Cityscapes
    if rng.uniform() < 0.7:
        hood = h - rng.uniform(0.04, 0.1) * h + 0.002 * (xx - w / 2) ** 2 * 8 / w
        label[yy >= hood] = SEG_IGNORE
    # image: a jittered colour per class, noise, windows on the buildings, shade on the cars
    img = np.zeros((h, w, 3), np.float32)
    for cls, color in _SEG_COLORS.items():
        jitter = rng.randint(-25, 26, size=3)
        img[label == cls] = np.clip(np.array(color) + jitter, 0, 255)
    windows = (label == ids['building']) & ((xx // 3) % 3 == 0) & ((yy // 3) % 3 == 0)
    img[windows] *= 0.55
    img[(label == ids['car']) & ((yy % 7) < 2)] *= 0.6
    img += rng.normal(0, 10, size=img.shape)
    return label, np.clip(img, 0, 255).astype(np.uint8)


def make_cityscapes_seg(root: str, splits: Dict[str, int] = None, size: Tuple[int, int] = (80, 160),
                        seed: int = 0) -> Dict[str, List[str]]:
    """Writes a Cityscapes-layout segmentation set of street scenes.

    ``root/leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` (RGB) and
    ``root/gtFine/{split}/<city>/<same stem>_gtFine_labelTrainIds.png`` (uint8 trainIds; 255, the ignore index,
    on the ego vehicle's hood). Classes (trainIds): road 0, sidewalk 1, building 2, pole 5, vegetation 8,
    terrain 9, sky 10, car 13; the other Cityscapes classes never occur.

    Args:
        root: Output folder.
        splits: ``{split name: number of images}``; default ``{'train': 48, 'val': 12}``.
        size: ``(height, width)`` of every image.
        seed: Seed of the generator; the same seed writes the same files.

    Returns:
        ``{split: [label file paths]}``.
    """
    from PIL import Image

    splits = splits or {'train': 48, 'val': 12}
    h, w = size
    out = {}
    for s_index, (split, count) in enumerate(sorted(splits.items())):
        rng = np.random.RandomState(seed * 1000 + 200 + s_index)
        out[split] = []
        for i in range(count):
            city = _CITIES[i % len(_CITIES)]
            stem = f'{city}_{i // len(_CITIES):06d}_{19:06d}'
            label, img = _street_scene(rng, h, w)
            img_dir = os.path.join(root, 'leftImg8bit', split, city)
            gt_dir = os.path.join(root, 'gtFine', split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)
            Image.fromarray(img).save(os.path.join(img_dir, f'{stem}_leftImg8bit.png'))
            gt_path = os.path.join(gt_dir, f'{stem}_gtFine_labelTrainIds.png')
            Image.fromarray(label).save(gt_path)
            out[split].append(gt_path)
    return out


# --------------------------------------------------------------------------------------------------------------
# ImageNet-style class folders
# --------------------------------------------------------------------------------------------------------------

CLS_CLASSES = ('checkerboard', 'dots', 'rings', 'stripes')


def _texture(rng: np.random.RandomState, kind: str, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1 = rng.randint(0, 256, size=3).astype(np.float32)
    c2 = c1.copy()
    while np.abs(c2 - c1).sum() < 200:
        c2 = rng.randint(0, 256, size=3).astype(np.float32)
    period = rng.uniform(12, 16)
    # stripes run roughly horizontally, checkerboards are roughly axis-aligned, rings and dots are isotropic
    ang = math.radians(rng.uniform(-20, 20))
    u = xx * math.cos(ang) + yy * math.sin(ang) + rng.uniform(0, period)
    v = -xx * math.sin(ang) + yy * math.cos(ang) + rng.uniform(0, period)
    if kind == 'stripes':
        m = (u // (period / 2)) % 2 == 0
    elif kind == 'checkerboard':
        m = ((u // (period / 2)) + (v // (period / 2))) % 2 == 0
    elif kind == 'rings':
        cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        m = (np.hypot(xx - cx, yy - cy) // (period / 2)) % 2 == 0
    else:  # dots: scattered discs
        m = np.zeros((h, w), bool)
        for _ in range(rng.randint(6, 14)):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2.5, 6)
            m |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img = np.where(m[..., None], c1, c2) + rng.normal(0, 12, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_imagenet_folder(root: str, splits: Dict[str, int] = None, size: int = 64, seed: int = 0,
                         classes: Sequence[str] = CLS_CLASSES) -> Dict[str, int]:
    """Writes an ImageNet-style folder set ``root/{split}/<class name>/<class name>_<i>.JPEG``.

    The classes are textures of random colours, scale, phase and (within +-20 degrees) orientation:
    ``checkerboard``, ``dots``, ``rings`` (concentric) and ``stripes`` (roughly horizontal); they differ by
    structure only, not by colour.
    mmpretrain's ``CustomDataset(data_prefix='{split}/')`` reads it, with classes in sorted folder order.

    Args:
        root: Output folder.
        splits: ``{split name: images per class}``; default ``{'train': 100, 'val': 10}``.
        size: Side of the square images.
        seed: Seed of the generator; the same seed writes the same files.
        classes: Class names, a subset of :data:`CLS_CLASSES`.

    Returns:
        ``{split: number of images written}``.
    """
    from PIL import Image

    unknown = set(classes) - set(CLS_CLASSES)
    if unknown:
        raise ValueError(f'make_imagenet_folder: unknown classes {sorted(unknown)}; known: {CLS_CLASSES}')
    splits = splits or {'train': 100, 'val': 10}
    out = {}
    for s_index, (split, per_class) in enumerate(sorted(splits.items())):
        rng = np.random.RandomState(seed * 1000 + 300 + s_index)
        out[split] = 0
        for name in classes:
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                img = _texture(rng, name, size, size)
                Image.fromarray(img).save(os.path.join(folder, f'{name}_{i:05d}.JPEG'), format='JPEG', quality=95)
                out[split] += 1
    return out
