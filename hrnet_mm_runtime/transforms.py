"""Image transforms of the OpenMMLab test pipelines, in NumPy and OpenCV (Pillow for the pipelines that resize
with it), with the libraries' arithmetic.

Each function reproduces one transform of mmcv/mmdet/mmseg/mmpose/mmpretrain on a ``(H, W, 3)`` ``uint8``
image (BGR, as OpenCV reads it), so an exported model sees the same input array as the PyTorch model.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np


def rescale_size(w: int, h: int, scale: Sequence[int]) -> Tuple[int, int]:
    """mmcv's ``rescale_size`` with a ``(long edge, short edge)`` bound: the largest size of the image's aspect
    ratio inside both bounds, rounded half up. Returns ``(new_w, new_h)``."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)


def _resize_to(img: np.ndarray, size: Tuple[int, int], backend: str) -> np.ndarray:
    """mmcv's ``imresize`` with bilinear interpolation: OpenCV's, or Pillow's (``backend='pillow'``)."""
    if backend == 'pillow':
        try:
            from PIL import Image
        except ImportError:
            raise ImportError("this model's test pipeline resizes with Pillow: pip install pillow") from None
        return np.array(Image.fromarray(img).resize(size, Image.BILINEAR))
    return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)


def resize(img: np.ndarray, scale: Sequence[int], keep_ratio: bool,
           backend: str = 'cv2') -> Tuple[np.ndarray, Tuple[float, float]]:
    """mmcv/mmdet/mmseg ``Resize`` (bilinear): to ``scale`` ``(w, h)``, or within it keeping the aspect ratio.
    Returns the image and ``(w_scale, h_scale)``, new size over old."""
    h, w = img.shape[:2]
    size = rescale_size(w, h, scale) if keep_ratio else (int(scale[0]), int(scale[1]))
    out = _resize_to(img, size, backend)
    return out, (out.shape[1] / w, out.shape[0] / h)


def resize_edge(img: np.ndarray, scale: int, edge: str, backend: str = 'cv2') -> Tuple[np.ndarray, Tuple[float, float]]:
    """mmpretrain ``ResizeEdge``: the ``edge`` ('short', 'long', 'width' or 'height') to ``scale`` pixels."""
    h, w = img.shape[:2]
    if (edge == 'short' and w < h) or (edge == 'long' and w > h) or edge == 'width':
        size = (scale, int(scale * h / w))
    else:
        size = (int(scale * w / h), scale)
    return resize(img, size, keep_ratio=False, backend=backend)


def center_crop(img: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """mmcv ``CenterCrop`` to ``size`` ``(w, h)`` (no padding: a smaller image keeps its size on that edge)."""
    h, w = img.shape[:2]
    cw, ch = min(int(size[0]), w), min(int(size[1]), h)
    y1 = max(0, int(round((h - ch) / 2.)))
    x1 = max(0, int(round((w - cw) / 2.)))
    return img[y1:min(h, y1 + ch), x1:min(w, x1 + cw)]


def normalize(images: List[np.ndarray], mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
              to_rgb: bool, pad_divisor: int = 1, pad_value: float = 0.0) -> Tuple[np.ndarray, List[Tuple[int, int]]]:
    """The data preprocessor: ``(H, W, 3)`` images -> ``(N, 3, H', W')`` float32 batch, channels reversed
    when ``to_rgb``, ``(x - mean) / std``, then padded at the bottom and right with ``pad_value`` to the largest
    size rounded up to ``pad_divisor``. Returns the batch and each image's ``(h, w)``."""
    shapes = [tuple(im.shape[:2]) for im in images]
    height = max(s[0] for s in shapes)
    width = max(s[1] for s in shapes)
    if pad_divisor > 1:
        height = -(-height // pad_divisor) * pad_divisor
        width = -(-width // pad_divisor) * pad_divisor
    batch = np.full((len(images), 3, height, width), pad_value, dtype=np.float32)
    m = np.asarray(mean, np.float32).reshape(3, 1, 1) if mean is not None else None
    s = np.asarray(std, np.float32).reshape(3, 1, 1) if std is not None else None
    for i, im in enumerate(images):
        x = im[..., ::-1] if to_rgb else im
        x = x.transpose(2, 0, 1).astype(np.float32)
        if m is not None:
            x = (x - m) / s
        batch[i, :, :x.shape[1], :x.shape[2]] = x
    return batch, shapes


def bbox_center_scale(bbox: np.ndarray, padding: float) -> Tuple[np.ndarray, np.ndarray]:
    """mmpose ``GetBBoxCenterScale``: centre and ``padding`` times the size of an ``(x1, y1, x2, y2)`` box."""
    bbox = np.asarray(bbox, np.float32)
    return (bbox[2:] + bbox[:2]) * 0.5, (bbox[2:] - bbox[:2]) * padding


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """mmpose's ``_fix_aspect_ratio``: grow the box's shorter side to the input's aspect ratio ``w / h``."""
    w, h = scale
    return np.array([w, w / aspect_ratio] if w > h * aspect_ratio else [h * aspect_ratio, h], dtype=scale.dtype)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return b + np.r_[-d[1], d[0]]


def warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: Sequence[int], udp: bool) -> np.ndarray:
    """mmpose's ``get_warp_matrix`` (or ``get_udp_warp_matrix`` when ``udp``) without rotation: the ``(2, 3)``
    affine map from the image to the ``output_size`` ``(w, h)`` crop of the box."""
    w, h = output_size
    if udp:
        mat = np.zeros((2, 3), dtype=np.float32)
        sx, sy = (w - 1) / scale[0], (h - 1) / scale[1]
        mat[0, 0], mat[1, 1] = sx, sy
        mat[0, 2] = sx * (-0.5 * center[0] * 2 + 0.5 * scale[0])
        mat[1, 2] = sy * (-0.5 * center[1] * 2 + 0.5 * scale[1])
        return mat
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + np.array([scale[0] * -0.5, 0.])
    dst[0] = [w * 0.5, h * 0.5]
    dst[1] = np.array([w * 0.5, h * 0.5]) + np.array([w * -0.5, 0.])
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    return cv2.getAffineTransform(np.float32(src), np.float32(dst))


def topdown_affine(img: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: Sequence[int],
                   udp: bool) -> Tuple[np.ndarray, np.ndarray]:
    """mmpose ``TopdownAffine``: the box (aspect ratio fixed to the input's) warped to ``input_size``
    ``(w, h)`` with bilinear sampling. Returns the crop and the fixed scale."""
    w, h = input_size
    scale = fix_aspect_ratio(scale, w / h)
    crop = cv2.warpAffine(img, warp_matrix(center, scale, (w, h), udp), (int(w), int(h)), flags=cv2.INTER_LINEAR)
    return crop, scale


def _ceil_to(size: Sequence[float], base: int) -> Tuple[int, int]:
    return tuple(int(np.ceil(s / base) * base) for s in size)  # type: ignore[return-value]


def bottomup_sizes(img_size: Tuple[int, int], input_size: Sequence[int], size_factor: int,
                   resize_mode: str) -> Tuple[Tuple[float, float], Tuple[int, int]]:
    """mmpose ``BottomupResize._get_input_size``: the ``(w, h)`` the image is resized to and the ``(w, h)`` of
    the model input holding it ('fit': inside ``input_size``; 'expand': covering it, rounded up to
    ``size_factor``)."""
    img_w, img_h = img_size
    ratio = img_w / img_h
    pad_w, pad_h = _ceil_to(input_size, size_factor)
    if resize_mode == 'fit':
        return (min(pad_w, pad_h * ratio), min(pad_h, pad_w / ratio)), (pad_w, pad_h)
    actual = (max(pad_w, pad_h * ratio), max(pad_h, pad_w / ratio))
    return actual, _ceil_to(actual, size_factor)


def bottomup_resize(img: np.ndarray, input_size: Sequence[int], size_factor: int, resize_mode: str, use_udp: bool,
                    pad_val: Sequence[float] = (0, 0, 0)) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """mmpose ``BottomupResize`` (one scale): the image warped into the model input.

    Returns the input image and ``dict(input_center, input_scale, input_size)``: the warp's centre and scale in
    image pixels and the input's ``(w, h)``, which map the model's input pixels back to the image."""
    img_h, img_w = img.shape[:2]
    actual, padded = bottomup_sizes((img_w, img_h), input_size, size_factor, resize_mode)
    if use_udp:
        center = np.array([(img_w - 1.0) / 2, (img_h - 1.0) / 2], dtype=np.float32)
        scale = np.array([img_w, img_h], dtype=np.float32)
        mat = warp_matrix(center, scale, actual, udp=True)
    else:
        center = np.array([img_w / 2, img_h / 2], dtype=np.float32)
        scale = np.array([img_w * padded[0] / actual[0], img_h * padded[1] / actual[1]], dtype=np.float32)
        mat = warp_matrix(center, scale, padded, udp=False)
    out = cv2.warpAffine(img, mat, padded, flags=cv2.INTER_LINEAR, borderValue=tuple(pad_val))
    return out, dict(input_center=center, input_scale=scale, input_size=np.array(padded))


def _source_index(out_size: int, in_size: int, align_corners: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear source coordinates along one axis: lower index, upper index, weight of the upper."""
    dst = np.arange(out_size, dtype=np.float32)
    if align_corners:
        ratio = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
        src = dst * ratio
    else:
        ratio = np.float32(in_size / out_size)
        src = np.maximum(ratio * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    lo = np.minimum(src.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_bilinear(x: np.ndarray, size: Tuple[int, int], align_corners: bool) -> np.ndarray:
    """``torch.nn.functional.interpolate(x, size, mode='bilinear', align_corners=...)`` for ``(C, H, W)``
    float32 maps, ``size`` ``(h, w)``."""
    c, h, w = x.shape
    y0, y1, wy = _source_index(size[0], h, align_corners)
    x0, x1, wx = _source_index(size[1], w, align_corners)
    top = x[:, y0] * (1 - wy)[None, :, None] + x[:, y1] * wy[None, :, None]
    return top[:, :, x0] * (1 - wx) + top[:, :, x1] * wx
