"""Box arithmetic of the detectors' post-processing in NumPy: mmdet's delta decoding, torchvision/mmcv NMS
(float32, as the libraries compute it), mmdet's per-class NMS, mmdet's mask pasting and mmpose's person-box
NMS."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def decode_deltas(priors: np.ndarray, deltas: np.ndarray, means: Sequence[float], stds: Sequence[float],
                  max_shape: Tuple[float, float] = None, wh_ratio_clip: float = 16 / 1000) -> np.ndarray:
    """mmdet's ``DeltaXYWHBBoxCoder.decode``: ``(R, 4)`` priors ``(x1, y1, x2, y2)`` and ``(R, 4)`` deltas
    ``(dx, dy, dw, dh)`` -> ``(R, 4)`` boxes, clipped to ``max_shape`` ``(h, w)`` when given."""
    d = deltas.astype(np.float32) * np.asarray(stds, np.float32) + np.asarray(means, np.float32)
    pxy = (priors[:, :2] + priors[:, 2:]) * np.float32(0.5)
    pwh = priors[:, 2:] - priors[:, :2]
    max_ratio = np.float32(abs(np.log(wh_ratio_clip)))
    gxy = pxy + pwh * d[:, :2]
    gwh = pwh * np.exp(np.clip(d[:, 2:], -max_ratio, max_ratio))
    boxes = np.concatenate([gxy - gwh * np.float32(0.5), gxy + gwh * np.float32(0.5)], axis=1)
    if max_shape is not None:
        h, w = max_shape
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    return boxes.astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> np.ndarray:
    """Greedy NMS as torchvision's and mmcv's CPU kernels compute it: by decreasing score, a box is dropped
    when its IoU (``(x2 - x1) * (y2 - y1)`` areas, float32) with a kept box exceeds ``iou_thr``. Returns the
    kept indices, highest score first."""
    boxes = boxes.astype(np.float32)
    order = np.argsort(-scores, kind='stable')
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    thr = np.float32(iou_thr)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        rest = rest[~suppressed[rest]]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(invalid='ignore', divide='ignore'):  # 0/0 for empty boxes: NaN, never above thr
            suppressed[rest[inter / (areas[i] + areas[rest] - inter) > thr]] = True
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_thr: float,
                class_agnostic: bool = False) -> np.ndarray:
    """mmcv's ``batched_nms``: NMS within each group (class), by shifting each group's boxes by
    ``group * (max coordinate + 1)``. Returns the kept indices, highest score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    if class_agnostic:
        return nms(boxes, scores, iou_thr)
    offsets = groups.astype(np.float32) * (boxes.max() + np.float32(1))
    return nms(boxes + offsets[:, None], scores, iou_thr)


def person_nms(dets: np.ndarray, thr: float) -> np.ndarray:
    """mmpose's ``nms`` of person boxes before top-down pose: ``(N, 5)`` ``(x1, y1, x2, y2, score)``, areas
    ``(x2 - x1 + 1) * (y2 - y1 + 1)``, a box dropped when its overlap exceeds ``thr``. Returns kept indices."""
    if len(dets) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2, scores = dets.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        order = order[np.where(inter / (areas[i] + areas[order[1:]] - inter) <= thr)[0] + 1]
    return np.asarray(keep, dtype=np.int64)


def _sample_zero_padded(mask: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Bilinear samples of a ``(h, w)`` map at pixel coordinates ``ix`` ``(W,)`` and ``iy`` ``(H,)`` (a grid),
    with zeros outside, as ``grid_sample`` computes them."""
    h, w = mask.shape
    x0 = np.floor(ix).astype(np.int64)
    y0 = np.floor(iy).astype(np.int64)
    wx1, wy1 = (ix - x0).astype(np.float32), (iy - y0).astype(np.float32)
    wx0, wy0 = np.float32(1) - wx1, np.float32(1) - wy1
    out = np.zeros((len(iy), len(ix)), dtype=np.float32)
    for yy, wy in ((y0, wy0), (y0 + 1, wy1)):
        for xx, wx in ((x0, wx0), (x0 + 1, wx1)):
            vy, vx = (yy >= 0) & (yy < h), (xx >= 0) & (xx < w)
            vals = mask[np.clip(yy, 0, h - 1)][:, np.clip(xx, 0, w - 1)] * (vy[:, None] & vx[None, :])
            out += vals * (wy[:, None] * wx[None, :])
    return out


def paste_masks(masks: np.ndarray, boxes: np.ndarray, img_h: int, img_w: int, threshold: float) -> np.ndarray:
    """mmdet's ``FCNMaskHead`` pasting on the CPU: each ``(m, m)`` mask probability map resampled bilinearly
    (``grid_sample``, ``align_corners=False``, zeros outside) onto its box's pixels within the box's bounds plus
    one pixel, then thresholded. Returns ``(N, img_h, img_w)`` bool masks."""
    out = np.zeros((len(masks), img_h, img_w), dtype=bool)
    for i, (mask, box) in enumerate(zip(masks.astype(np.float32), boxes.astype(np.float32))):
        x0, y0, x1, y1 = box
        x0_int = max(int(np.floor(x0)) - 1, 0)
        y0_int = max(int(np.floor(y0)) - 1, 0)
        x1_int = min(int(np.ceil(x1)) + 1, img_w)
        y1_int = min(int(np.ceil(y1)) + 1, img_h)
        with np.errstate(divide='ignore', invalid='ignore'):
            gx = (np.arange(x0_int, x1_int, dtype=np.float32) + np.float32(0.5) - x0) / (x1 - x0) * 2 - 1
            gy = (np.arange(y0_int, y1_int, dtype=np.float32) + np.float32(0.5) - y0) / (y1 - y0) * 2 - 1
        gx[np.isinf(gx)] = 0
        gy[np.isinf(gy)] = 0
        m_h, m_w = mask.shape
        ix = ((gx + 1) * m_w - 1) / 2
        iy = ((gy + 1) * m_h - 1) / 2
        out[i, y0_int:y1_int, x0_int:x1_int] = _sample_zero_padded(mask, ix, iy) >= threshold
    return out


def mask_to_rle(mask: np.ndarray) -> dict:
    """An ``(H, W)`` binary mask in COCO's compressed run-length encoding, as ``pycocotools.mask.encode`` writes
    it (and mmdet's ``encode_mask_results``): ``dict(size=[H, W], counts=str)``, runs over the column-major
    pixels starting with a run of zeros, each count written as the difference to the one two before in
    6-bit groups offset by 48."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    chars = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1f
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return dict(size=[int(h), int(w)], counts=''.join(chars))
