"""Pictures of the runtime's results, drawn with OpenCV on a copy of the BGR image."""
from __future__ import annotations

from typing import Dict, List, Sequence

import cv2
import numpy as np


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` distinct BGR colours (a fixed pseudo-random sequence)."""
    rng = np.random.default_rng(42)
    return rng.integers(64, 256, (max(n, 1), 3)).astype(np.uint8)


def _label(img: np.ndarray, text: str, x: int, y: int, color: Sequence[int]) -> None:
    cv2.putText(img, text, (x, max(y, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, tuple(int(c) for c in color), 1,
                cv2.LINE_AA)


def draw_boxes(img: np.ndarray, result: Dict[str, np.ndarray], classes: List[str], score_thr: float) -> np.ndarray:
    """Boxes scoring at least ``score_thr``, with class name and score (and their masks, blended)."""
    out = img.copy()
    colors = palette(len(classes))
    masks = result.get('masks')
    for i, (box, score, label) in enumerate(zip(result['bboxes'], result['scores'], result['labels'])):
        if score < score_thr:
            continue
        if masks is not None:
            out[masks[i]] = (out[masks[i]] * 0.5 + colors[int(label) % len(colors)] * 0.5).astype(np.uint8)
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        color = tuple(int(c) for c in colors[int(label) % len(colors)])
        cv2.rectangle(out, (x0, y0), (x1, y1), color, 1)
        name = classes[int(label)] if int(label) < len(classes) else str(int(label))
        _label(out, f'{name} {score:.2f}', x0, y0 - 2, color)
    return out


def draw_classes(img: np.ndarray, class_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The class map blended over the image."""
    colors = palette(int(class_map.max()) + 1)
    return cv2.addWeighted(img, 1 - alpha, colors[class_map], alpha, 0)


def draw_pose(img: np.ndarray, result: Dict[str, np.ndarray], skeleton: Sequence[Sequence[int]],
              score_thr: float) -> np.ndarray:
    """Each person's box, the keypoints scoring at least ``score_thr`` and the skeleton links between them."""
    out = img.copy()
    colors = palette(len(result['keypoints']))
    for person, (kpts, scores, box) in enumerate(zip(result['keypoints'], result['keypoint_scores'],
                                                     result['bboxes'])):
        color = tuple(int(c) for c in colors[person])
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, 1)
        visible = scores >= score_thr
        for a, b in skeleton:
            if visible[a] and visible[b]:
                cv2.line(out, tuple(int(round(v)) for v in kpts[a]), tuple(int(round(v)) for v in kpts[b]), color, 1,
                         cv2.LINE_AA)
        for (x, y), v in zip(kpts, visible):
            if v:
                cv2.circle(out, (int(round(x)), int(round(y))), 2, color, -1, cv2.LINE_AA)
    return out


def draw_label(img: np.ndarray, result: Dict, classes: List[str]) -> np.ndarray:
    """The top class and its score in the top-left corner."""
    out = img.copy()
    label = result['label']
    name = classes[label] if label < len(classes) else str(label)
    _label(out, f'{name} {result["scores"][label]:.2f}', 2, 12, (255, 255, 255))
    return out
