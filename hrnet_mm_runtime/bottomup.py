"""Bottom-up pose decoding in NumPy and OpenCV, as mmpose computes it.

DEKR: the flip test's merge of heatmaps and displacements, the ``SPR`` codec's decoding (people's centres from
the centre heatmap, their keypoints from the displacements there, keypoint scores sampled from the keypoint
heatmaps), the rescoring net and the pose NMS (``nearby_joints_nms``). CID: the ``DecoupledHeatmap`` codec's
decoding of each person's heatmaps (the graph holds the rest). Associative embedding: the
``AssociativeEmbedding`` codec's decoding (keypoint candidates grouped into people by their tags with the
Munkres assignment of the ``munkres`` package, which mmpose uses too)."""
from __future__ import annotations

import base64
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .keypoints import flip_back, heatmap_maximum, refine_shift


def merge_flipped_dekr(heatmaps: np.ndarray, displacements: np.ndarray, flipped_heatmaps: np.ndarray,
                       flipped_displacements: np.ndarray, flip_indices: Sequence[int], shift: bool,
                       input_width: int) -> Tuple[np.ndarray, np.ndarray]:
    """``DEKRHead.predict``'s flip test: ``(N, K + 1, h, w)`` heatmaps (the centre map last, kept in place)
    and ``(N, 2K, h, w)`` displacements of the images and of their mirrors. The mirror's displacements get
    ``(s - 1) / s`` added to x, ``s`` the input's width over the heatmap's, before the average."""
    count = len(flip_indices)
    back = flip_back(flipped_heatmaps, list(flip_indices) + [count])
    if shift:
        back[..., 1:] = back[..., :-1].copy()
    merged_heatmaps = (heatmaps + back) / np.float32(2.0)
    back = flip_back(flipped_displacements, flip_indices, 'offset')
    x_scale = input_width / heatmaps.shape[-1]
    back[:, ::2] += np.float32((x_scale - 1) / x_scale)
    return merged_heatmaps, (displacements + back) / np.float32(2.0)


def heatmap_nms(heatmap: np.ndarray, kernel: int) -> np.ndarray:
    """mmpose's ``batch_heatmap_nms`` for one ``(h, w)`` map: each value where it is the maximum of its
    ``kernel`` x ``kernel`` neighbourhood, 0 elsewhere."""
    maximum = cv2.dilate(heatmap, np.ones((kernel, kernel), np.uint8))  # the border does not raise the maximum
    return heatmap * (heatmap == maximum).astype(np.float32)


def grid_sample_border(maps: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``F.grid_sample(maps[:, None], grid, padding_mode='border')`` (bilinear, ``align_corners=False``) at the
    ``(K, M, 2)`` pixel coordinates ``points`` of ``(K, h, w)`` maps, with mmpose's normalisation by
    ``w - 1`` and ``h - 1``: ``(K, M)`` values."""
    k, h, w = maps.shape
    gx = points[..., 0] / np.float32(w - 1) * 2 - 1
    gy = points[..., 1] / np.float32(h - 1) * 2 - 1
    x = np.clip(((gx + 1) * w - 1) / 2, 0, w - 1)
    y = np.clip(((gy + 1) * h - 1) / 2, 0, h - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    rows = np.arange(k)[:, None]
    return (maps[rows, y0, x0] * (1 - fx) * (1 - fy) + maps[rows, y0, x1] * fx * (1 - fy)
            + maps[rows, y1, x0] * (1 - fx) * fy + maps[rows, y1, x1] * fx * fy).astype(np.float32)


def decode_spr(heatmaps: np.ndarray, displacements: np.ndarray,
               codec: Dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mmpose's ``SPR.decode`` of one image's ``(K + 1, h, w)`` heatmaps and ``(2K, h, w)`` displacements.

    Returns ``(N, K, 2)`` keypoints in input pixels, ``(N,)`` centre scores and ``(N, K)`` keypoint scores
    of the at most ``max_instances`` local maxima of the centre map above ``score_thr``, highest first."""
    heatmaps = heatmaps.astype(np.float32)
    k2, h, w = displacements.shape
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing='ij')
    posemaps = (np.stack([xs, ys])[None] + displacements.reshape(k2 // 2, 2, h, w)).reshape(k2 // 2, 2, -1)
    peaks = heatmap_nms(heatmaps[-1], codec['nms_kernel']).reshape(-1)
    order = np.argsort(-peaks, kind='stable')[:codec['max_instances']]
    order = order[peaks[order] > codec['score_thr']]
    keypoints = posemaps[:, :, order].transpose(2, 0, 1)
    scores = grid_sample_border(heatmaps[:-1], keypoints.transpose(1, 0, 2)).T
    factor = np.array(codec['input_size'], np.float32) / np.array(codec['heatmap_size'], np.float32)
    return (keypoints * factor).astype(np.float32), peaks[order], np.ascontiguousarray(scores)


def _array(entry: Dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry['data']), dtype='<f4').reshape(entry['shape'])


class RescoreNet:
    """DEKR's rescoring net (mmpose's ``RescoreNet``): an MLP that predicts each person's OKS from the
    skeleton's limb vectors and lengths (normalised by the torso) and the keypoint scores.

    Args:
        recipe: ``dict(norm_indexes, layers=[dict(weight, bias)] * 3)`` as the exporter stores it.
    """

    def __init__(self, recipe: Dict) -> None:
        self.norm_indexes = recipe['norm_indexes']
        self.layers = [(_array(layer['weight']), _array(layer['bias'])) for layer in recipe['layers']]

    def features(self, keypoints: np.ndarray, scores: np.ndarray, skeleton: Sequence[Sequence[int]]) -> np.ndarray:
        a, b = (list(j) for j in zip(*skeleton))
        limbs = keypoints[:, a] - keypoints[:, b]
        lengths = np.sqrt((limbs ** 2).sum(axis=2))
        i, j = self.norm_indexes
        norm = np.maximum((lengths[:, i] + lengths[:, j]) / 2, 1)[:, None]
        return np.concatenate([(limbs / norm[..., None]).reshape(len(limbs), -1), lengths / norm, scores],
                              axis=1).astype(np.float32)

    def __call__(self, keypoints: np.ndarray, scores: np.ndarray, skeleton: Sequence[Sequence[int]]) -> np.ndarray:
        """``(N, K, 2)`` keypoints and ``(N, K)`` scores -> ``(N,)`` predicted OKS (0 where not finite)."""
        x = self.features(keypoints, scores, skeleton)
        for index, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            if index < len(self.layers) - 1:
                x = np.maximum(x, 0)
        out = x[:, 0]
        out[np.isnan(out)] = 0
        return out


def nearby_joints_nms(keypoints: np.ndarray, scores: np.ndarray, dist_thr: float,
                      joints_thr: Optional[int] = None, max_dets: int = 30) -> List[int]:
    """mmpose's ``nearby_joints_nms`` (``score_per_joint=True``): people with more than ``joints_thr`` (half the
    keypoints by default) keypoints within ``dist_thr`` of their pose's diagonal of a better person's are
    dropped. ``keypoints`` ``(N, K, 2)``, ``scores`` ``(N, K)``; returns the kept indices."""
    if len(keypoints) == 0:
        return []
    person = scores.mean(axis=1)
    count, joints = keypoints.shape[:2]
    if joints_thr is None:
        joints_thr = joints // 2
    area = keypoints.max(axis=1) - keypoints.min(axis=1)
    area = np.sqrt(np.power(area, 2).sum(axis=1))
    close_thr = np.tile(area.reshape(count, 1, 1), (count, joints)) * dist_thr
    dist = np.sqrt(np.power(keypoints[:, None] - keypoints, 2).sum(axis=3))
    close = (dist < close_thr).sum(2) > joints_thr
    ignored, keep = set(), []
    for i in np.argsort(person)[::-1]:
        if i in ignored:
            continue
        near = close[i].nonzero()[0]
        best = near[np.argmax(person[near])]
        if best not in ignored:
            keep.append(int(best))
            ignored |= set(near.tolist())
    if max_dets > 0 and len(keep) > max_dets:
        keep = [keep[i] for i in np.argsort(person[keep])[-1:-max_dets - 1:-1]]
    return keep


def decode_cid(instance_heatmaps: np.ndarray, instance_scores: np.ndarray, codec: Dict,
               input_size: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """``CIDHead.predict``'s decoding: of the ``(M, K, h, w)`` per-person heatmaps, those whose centre scores above
    ``score_thr``; each keypoint at its map's maximum moved a quarter pixel towards the higher neighbour, scaled
    to the codec's input size and moved by half a heatmap pixel of the ``(w, h)`` ``input_size``.

    Returns ``(N, K, 2)`` keypoints in input pixels and ``(N, K)`` scores (the maximum times the centre score).
    """
    keep = instance_scores > codec['score_thr']
    heatmaps, scores = instance_heatmaps[keep].astype(np.float32), instance_scores[keep].astype(np.float32)
    count, joints, h, w = heatmaps.shape
    factor = (np.array(codec['input_size']) / codec['heatmap_size']).astype(np.float32)
    keypoints = np.zeros((count, joints, 2), np.float32)
    keypoint_scores = np.zeros((count, joints), np.float32)
    for i, (maps, score) in enumerate(zip(heatmaps, scores)):
        locs, values = heatmap_maximum(maps)
        keypoints[i] = refine_shift(locs, maps) * factor
        keypoint_scores[i] = values * score
    keypoints[..., 0] += input_size[0] / w / 2.0
    keypoints[..., 1] += input_size[1] / h / 2.0
    return keypoints, keypoint_scores


def _munkres(cost: np.ndarray) -> np.ndarray:
    try:
        from munkres import Munkres
    except ImportError:
        raise ImportError('associative-embedding decoding needs the munkres package: pip install munkres') from None
    return np.array(Munkres().compute(cost)).astype(int)


def group_by_tags(vals: np.ndarray, tags: np.ndarray, locs: np.ndarray, order: Sequence[int], val_thr: float,
                  tag_thr: float, max_groups: Optional[int]) -> np.ndarray:
    """mmpose's ``_group_keypoints_by_tags``: the ``(K, M)`` candidates (``tags`` ``(K, M, L)``, ``locs``
    ``(K, M, 2)``) above ``val_thr``, keypoint by keypoint in ``order``, each assigned (Munkres, cost: the
    rounded tag distance times 100 minus the score) to the person whose mean tag is nearest if that distance
    is below ``tag_thr``, else starting a person. Returns ``(G, K, 3)``: x, y, score (zeros where missing)."""
    count, candidates, dims = locs.shape
    default = np.zeros((count, 3 + tags.shape[2]), dtype=np.float32)
    people: Dict = {}
    person_tags: Dict = {}
    for i in range(count):
        idx = order[i]
        joints = np.concatenate((locs[idx], vals[idx, :, None], tags[idx]), 1)
        mask = joints[:, 2] > val_thr
        joint_tags, joints = tags[idx][mask], joints[mask]
        if joints.shape[0] == 0:
            continue
        if i == 0 or len(people) == 0:
            for tag, joint in zip(joint_tags, joints):
                people.setdefault(tag[0], np.copy(default))[idx] = joint
                person_tags[tag[0]] = [tag]
            continue
        keys = list(people.keys())
        means = [np.mean(person_tags[key], axis=0) for key in keys]
        diff = joints[:, None, 3:] - np.array(means)[None, :, :]
        dist = np.linalg.norm(diff, ord=2, axis=2)
        cost = np.round(dist) * 100 - joints[:, 2:3]
        added, grouped = diff.shape[:2]
        if added > grouped:
            cost = np.concatenate((cost, np.zeros((added, added - grouped), dtype=np.float32) + 1e10), axis=1)
        for row, col in _munkres(cost):
            if row < added and col < grouped and dist[row][col] < tag_thr:
                people[keys[col]][idx] = joints[row]
                person_tags[keys[col]].append(joint_tags[row])
            else:
                key = joint_tags[row][0]
                people.setdefault(key, np.copy(default))[idx] = joints[row]
                person_tags[key] = [joint_tags[row]]
    keys = list(people.keys())[:max_groups]
    if not keys:
        return np.empty((0, count, dims + 1), dtype=np.float32)
    return np.array([people[key] for key in keys]).astype(np.float32)[..., :dims + 1]


def _fill_missing(keypoints: np.ndarray, scores: np.ndarray, heatmaps: np.ndarray,
                  tags: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """mmpose's ``_fill_missing_keypoints``: each person's missing keypoint at the pixel of lowest rounded tag
    distance to the person's mean tag times 100 minus the heatmap."""
    count, joints = keypoints.shape[:2]
    h, w = heatmaps.shape[1:]
    dims = tags.shape[0] // joints
    keypoint_tags = [tags[k::joints] for k in range(joints)]
    for n in range(count):
        found = []
        for k in range(joints):
            if scores[n, k] > 0:
                x, y = keypoints[n, k, :2].astype(np.int64)
                found.append(keypoint_tags[k][:, np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)])
        tag = np.mean(found, axis=0).reshape(dims, 1, 1)
        for k in range(joints):
            if scores[n, k] > 0:
                continue
            cost = np.round(np.linalg.norm(keypoint_tags[k] - tag, ord=2, axis=0)) * 100 - heatmaps[k]
            y, x = np.unravel_index(np.argmin(cost), shape=(h, w))
            keypoints[n, k] = [x, y]
            scores[n, k] = heatmaps[k, y, x]
    return keypoints, scores


def decode_associative_embedding(heatmaps: np.ndarray, tags: np.ndarray,
                                 codec: Dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mmpose's ``AssociativeEmbedding.batch_decode`` of one image's ``(K, H, W)`` heatmaps and ``(L * K, H, W)``
    tags: per keypoint the ``topk`` local maxima, grouped into people (:func:`group_by_tags`), each moved a
    quarter pixel towards its higher neighbour and by ``center_shift``, the missing ones filled, scaled to the
    codec's input size.

    Returns ``(N, K, 2)`` keypoints, ``(N, K)`` scores and ``(N,)`` person scores (the mean of the grouped
    keypoints' scores, before the filling)."""
    heatmaps, tags = heatmaps.astype(np.float32), tags.astype(np.float32)
    joints, h, w = heatmaps.shape
    peaks = np.stack([heatmap_nms(m, codec['nms_kernel']) for m in heatmaps]).reshape(joints, -1)
    index = np.argsort(-peaks, axis=1, kind='stable')[:, :codec['topk']]
    vals = np.take_along_axis(peaks, index, axis=1)
    dims = tags.shape[0] // joints
    flat_tags = tags.reshape(dims, joints, h * w)
    cand_tags = np.stack([np.take_along_axis(flat_tags[d], index, axis=1) for d in range(dims)], axis=-1)
    locs = np.stack([index % w, index // w], axis=-1)
    groups = group_by_tags(vals, cand_tags, locs, codec['keypoint_order'], codec['keypoint_thr'],
                           codec['tag_thr'], codec['max_instances'])
    keypoints, scores = groups[..., :-1], groups[..., -1]
    person_scores = scores.mean(axis=-1)
    if keypoints.size > 0:
        keypoints = np.stack([refine_shift(k, heatmaps) for k in keypoints])
        keypoints += codec['center_shift'] * (scores > 0).astype(keypoints.dtype)[..., None]
        keypoints, scores = _fill_missing(keypoints, scores, heatmaps, tags)
    factor = (np.array(codec['input_size']) / codec['heatmap_size']).astype(np.float32)
    return keypoints * factor, scores, person_scores
