"""Heatmap decoding of mmpose's codecs in NumPy and OpenCV: the flip test's heatmap merge,
``MSRAHeatmap`` (argmax with the quarter-pixel shift, or DARK refinement when unbiased) and ``UDPHeatmap``
(DARK-UDP refinement)."""
from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np


def flip_back(flipped: np.ndarray, flip_indices: Sequence[int], mode: str = 'heatmap') -> np.ndarray:
    """mmpose's ``flip_heatmaps`` without the shift: ``(N, C, h, w)`` maps of mirrored images in the originals'
    frame, mirrored and their keypoints swapped by ``flip_indices``. ``mode='udp_combined'``: maps in threes
    per keypoint (heatmap, x offset, y offset), the x offsets negated; ``mode='offset'``: maps in twos (x and y
    displacement), the x displacements negated."""
    if mode == 'heatmap':
        return flipped[..., ::-1][:, list(flip_indices)].copy()
    n, c, h, w = flipped.shape
    group = 3 if mode == 'udp_combined' else 2
    back = flipped.reshape(n, c // group, group, h, w)[..., ::-1][:, list(flip_indices)].copy()
    x = 1 if mode == 'udp_combined' else 0
    back[:, :, x] = -back[:, :, x]
    return back.reshape(n, c, h, w)


def merge_flipped(heatmaps: np.ndarray, flipped: np.ndarray, flip_indices: Sequence[int], shift: bool,
                  mode: str = 'heatmap') -> np.ndarray:
    """mmpose's flip test for ``(N, K, h, w)`` heatmaps of the crops and of their mirrors: the mirror's maps
    flipped back (:func:`flip_back`), shifted one pixel right when ``shift``, and averaged with the crops'
    maps."""
    back = flip_back(flipped, flip_indices, mode)
    if shift:
        back[..., 1:] = back[..., :-1].copy()
    return (heatmaps + back) * np.float32(0.5)


def heatmap_maximum(heatmaps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(K, h, w)`` heatmaps -> ``(K, 2)`` integer ``(x, y)`` of each maximum (-1 where it is <= 0) and the
    ``(K,)`` maxima."""
    k, h, w = heatmaps.shape
    flat = heatmaps.reshape(k, -1)
    idx = np.argmax(flat, axis=1)
    locs = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    vals = np.amax(flat, axis=1)
    locs[vals <= 0.] = -1
    return locs, vals


def _blur(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """Gaussian blur of each map (zero border of ``kernel // 2``), rescaled to keep the map's maximum."""
    border = (kernel - 1) // 2
    out = heatmaps.copy()
    for k, hm in enumerate(heatmaps):
        peak = np.max(hm)
        padded = np.zeros((hm.shape[0] + 2 * border, hm.shape[1] + 2 * border), dtype=np.float32)
        padded[border:-border, border:-border] = hm
        blurred = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:-border, border:-border]
        out[k] = blurred * (peak / np.max(blurred))
    return out


def refine_shift(locs: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """A quarter pixel from each maximum towards its higher neighbour, in x and in y."""
    _, h, w = heatmaps.shape
    out = locs.copy()
    for k, (x, y) in enumerate(locs.astype(int)):
        dx = heatmaps[k, y, x + 1] - heatmaps[k, y, x - 1] if 1 < x < w - 1 and 0 < y < h else 0.
        dy = heatmaps[k, y + 1, x] - heatmaps[k, y - 1, x] if 1 < y < h - 1 and 0 < x < w else 0.
        out[k] += np.sign([dx, dy], dtype=np.float32) * np.float32(0.25)
    return out


def refine_dark(locs: np.ndarray, heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """DARK: a Newton step on the log of the blurred heatmap around each maximum."""
    _, h, w = heatmaps.shape
    logs = np.log(np.maximum(_blur(heatmaps, kernel), 1e-10))
    out = locs.copy()
    for k, (x, y) in enumerate(locs.astype(int)):
        if not (1 < x < w - 2 and 1 < y < h - 2):
            continue
        m = logs[k]
        dx = 0.5 * (m[y, x + 1] - m[y, x - 1])
        dy = 0.5 * (m[y + 1, x] - m[y - 1, x])
        dxx = 0.25 * (m[y, x + 2] - 2 * m[y, x] + m[y, x - 2])
        dxy = 0.25 * (m[y + 1, x + 1] - m[y - 1, x + 1] - m[y + 1, x - 1] + m[y - 1, x - 1])
        dyy = 0.25 * (m[y + 2, x] - 2 * m[y, x] + m[y - 2, x])
        hessian = np.array([[dxx, dxy], [dxy, dyy]])
        if dxx * dyy - dxy ** 2 != 0:
            out[k] += np.squeeze(-np.linalg.inv(hessian) @ np.array([[dx], [dy]]), axis=1)
    return out


def refine_dark_udp(locs: np.ndarray, heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """DARK for UDP: the Newton step on the log of the blurred, clipped heatmap, edge-padded by one pixel."""
    k_count, h, w = heatmaps.shape
    logs = np.log(np.clip(_blur(heatmaps, kernel), 1e-3, 50.))
    pad = np.pad(logs, ((0, 0), (1, 1), (1, 1)), mode='edge').flatten()
    px, py = locs[:, 0], locs[:, 1]
    index = px + 1 + (py + 1) * (w + 2)
    index += (w + 2) * (h + 2) * np.arange(0, k_count)
    index = index.astype(int).reshape(-1, 1)
    i_ = pad[index]
    ix1, iy1 = pad[index + 1], pad[index + w + 2]
    ix1y1 = pad[index + w + 3]
    ix1_y1_ = pad[index - w - 3]
    ix1_, iy1_ = pad[index - 1], pad[index - 2 - w]
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    derivative = np.concatenate([dx, dy], axis=1).reshape(k_count, 2, 1)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    hessian = np.concatenate([dxx, dxy, dxy, dyy], axis=1).reshape(k_count, 2, 2)
    hessian = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))
    out = locs.copy()
    out -= np.einsum('kij,kjl->kil', hessian, derivative).squeeze(-1)
    return out


def decode_combined(heatmaps: np.ndarray, blur_kernel_size: int, radius_factor: float) -> Tuple[np.ndarray, np.ndarray]:
    """UDP's 'combined' maps ``(3K, h, w)`` (per keypoint a heatmap and x/y offsets in units of ``radius_factor *
    max(h, w)``): the maximum of each blurred heatmap moved by the offsets there, in heatmap pixels."""
    heatmaps = heatmaps.copy()
    _, h, w = heatmaps.shape
    count = heatmaps.shape[0] // 3
    size = 2 * blur_kernel_size + 1
    for k in range(count):
        heatmaps[3 * k] = cv2.GaussianBlur(heatmaps[3 * k], (size, size), 0)
    radius = radius_factor * max(w, h)
    x_offset = heatmaps[1::3].flatten() * radius
    y_offset = heatmaps[2::3].flatten() * radius
    locs, scores = heatmap_maximum(heatmaps[::3])
    index = ((locs[..., 0] + locs[..., 1] * w).flatten() + w * h * np.arange(0, count)).astype(int)
    locs += np.stack((x_offset[index], y_offset[index]), axis=-1)
    return locs.astype(np.float32), scores


def decode(heatmaps: np.ndarray, codec: dict) -> Tuple[np.ndarray, np.ndarray]:
    """One instance's ``(K, h, w)`` heatmaps (``(3K, h, w)`` for UDP's 'combined' maps) -> ``(K, 2)`` keypoints
    in the crop's pixels and ``(K,)`` scores, by the recipe's codec (``MSRAHeatmap`` or ``UDPHeatmap``)."""
    heatmaps = heatmaps.astype(np.float32)
    in_w, in_h = codec['input_size']
    hm_w, hm_h = codec['heatmap_size']
    if codec.get('heatmap_type') == 'combined':
        locs, scores = decode_combined(heatmaps, codec['blur_kernel_size'], codec['radius_factor'])
        return locs / [hm_w - 1, hm_h - 1] * np.array([in_w, in_h]), scores
    locs, scores = heatmap_maximum(heatmaps)
    if codec['type'] == 'UDPHeatmap':
        locs = refine_dark_udp(locs, heatmaps, codec['blur_kernel_size'])
        return locs / [hm_w - 1, hm_h - 1] * np.array([in_w, in_h]), scores
    if codec.get('unbiased'):
        locs = refine_dark(locs, heatmaps, codec['blur_kernel_size'])
    else:
        locs = refine_shift(locs, heatmaps)
    return locs * (np.array([in_w, in_h]) / np.array([hm_w, hm_h])), scores
