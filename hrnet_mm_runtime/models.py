"""The exported models, run by onnxruntime, from a BGR image to the task's result.

:func:`load` opens a file written by ``tools/deploy/export_onnx.py`` (or ``hrnet_mm.deploy.whole.export_model``)
and returns the predictor of its task; :class:`TopDownPose` chains a detector and a pose model the way
mmpose's ``Pose2DInferencer`` does. Every predictor takes an ``(H, W, 3)`` ``uint8`` BGR image (as
``cv2.imread`` returns it) and gives NumPy arrays in the image's pixels.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import transforms as T
from .bottomup import (
    RescoreNet,
    decode_associative_embedding,
    decode_cid,
    decode_spr,
    merge_flipped_dekr,
    nearby_joints_nms,
)
from .boxes import batched_nms, decode_deltas, paste_masks, person_nms
from .keypoints import decode, merge_flipped

METADATA_KEY = 'hrnet_mm'
FORMAT = 'hrnet_mm.onnx/1'


class RuntimeModelError(ValueError):
    """The file is not an hrnet_mm whole-model export, or an input does not fit it."""


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over='ignore'):  # exp overflows to inf for large negative inputs: 1 / inf = 0, as wanted
        return 1 / (1 + np.exp(-x.astype(np.float32)))


def _check_image(img: Any) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        got = f'{img.dtype} array of shape {img.shape}' if isinstance(img, np.ndarray) else type(img).__name__
        raise RuntimeModelError(f'expected an (H, W, 3) uint8 BGR image, got {got}')
    return img


class Model:
    """An exported model and its recipe.

    Args:
        path: The ONNX file.
        threads: onnxruntime's intra-op threads (its default without).
        providers: onnxruntime execution providers.
    """

    task = ''

    def __init__(self, path: str, threads: Optional[int] = None,
                 providers: Sequence[str] = ('CPUExecutionProvider', )) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(path, options, providers=list(providers))
        except Exception as e:  # a missing, truncated or non-ONNX file
            raise RuntimeModelError(f'cannot open {path} with onnxruntime: {(str(e).strip().splitlines() or [""])[0]}')
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise RuntimeModelError(f'{path} has no hrnet_mm recipe: export it with tools/deploy/export_onnx.py '
                                    f'(--part model)')
        self.recipe: Dict[str, Any] = json.loads(meta[METADATA_KEY])
        if self.recipe.get('format') != FORMAT:
            raise RuntimeModelError(f'{path}: recipe format {self.recipe.get("format")!r}, this runtime reads {FORMAT}')
        if self.task and self.recipe['task'] != self.task:
            raise RuntimeModelError(f'{path} is a {self.recipe["task"]} model, not {self.task}')
        self.path = path
        self.classes: List[str] = list(self.recipe.get('classes', []))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, *arrays: np.ndarray) -> List[np.ndarray]:
        """The graph's raw outputs for its inputs."""
        return self.session.run(None, dict(zip(self.input_names, arrays)))

    def preprocess(self, img: np.ndarray) -> Tuple[np.ndarray, Dict[str, Any]]:
        """The recipe's image steps and normalisation: ``(1, 3, H, W)`` input and the image's metadata
        (``ori_shape``, ``img_shape`` ``(h, w)`` and ``scale_factor`` ``(w_scale, h_scale)``; after a bottom-up
        resize also ``input_center``, ``input_scale`` and ``input_size``)."""
        img = _check_image(img)
        meta = dict(ori_shape=img.shape[:2], scale_factor=(1.0, 1.0))
        for step in self.recipe['preprocess']['steps']:
            if step['type'] == 'resize':
                img, meta['scale_factor'] = T.resize(img, step['scale'], step['keep_ratio'], step.get('backend', 'cv2'))
            elif step['type'] == 'resize_edge':
                img, meta['scale_factor'] = T.resize_edge(img, step['scale'], step['edge'], step.get('backend', 'cv2'))
            elif step['type'] == 'center_crop':
                img = T.center_crop(img, step['size'])
            elif step['type'] == 'bottomup_resize':
                img, warp = T.bottomup_resize(img, step['input_size'], step['size_factor'], step['resize_mode'],
                                              step['use_udp'], step['pad_val'])
                meta.update(warp)
            else:
                raise RuntimeModelError(f'the image step {step["type"]} needs boxes (a pose model)')
        pre = self.recipe['preprocess']
        batch, shapes = T.normalize([img], pre['mean'], pre['std'], pre['to_rgb'], pre['pad_divisor'],
                                    pre['pad_value'])
        meta['img_shape'] = shapes[0]
        return batch, meta


class Detector(Model):
    """Faster R-CNN, Mask R-CNN, their cascades and FCOS: ``detector(img)`` -> ``dict(bboxes=(N, 4) x1 y1 x2 y2,
    scores=(N,), labels=(N,))`` after mmdet's post-processing (softmax or sigmoid scores, box decoding,
    rescaling, per-class NMS, ``max_per_img``), highest score first; with ``masks=(N, H, W)`` bool for (Cascade)
    Mask R-CNN, whose graph ends with the NMS and the mask heads: the runtime rescales the boxes and pastes the
    masks."""

    task = 'detection'

    def __call__(self, img: np.ndarray) -> Dict[str, np.ndarray]:
        x, meta = self.preprocess(img)
        if self.recipe['detection'].get('dense'):
            return self.postprocess_dense(self.run(x), meta)
        outputs = self.run(x, np.asarray(meta['img_shape'], np.float32))
        if self.recipe['detection'].get('masks'):
            return self.postprocess_masks(*outputs, meta)
        return self.postprocess(*outputs[:3], meta)  # the fourth output holds the proposals

    def postprocess_dense(self, outputs: List[np.ndarray], meta: Dict[str, Any]) -> Dict[str, np.ndarray]:
        """mmdet's ``BaseDenseHead.predict_by_feat`` for FCOS: per level the scores above ``score_thr``, the top
        ``nms_pre`` of them, their distances decoded around the level's points and clipped; then rescaled,
        multiplied by the centerness, size-filtered and NMS-ed per class."""
        cfg = self.recipe['detection']
        dense = cfg['dense']
        levels = len(dense['strides'])
        cls_maps, reg_maps, ctr_maps = outputs[:levels], outputs[levels:2 * levels], outputs[2 * levels:]
        boxes, scores, labels, factors = [], [], [], []
        for (sw, sh), cls, reg, ctr in zip(dense['strides'], cls_maps, reg_maps, ctr_maps):
            _, classes, h, w = cls.shape
            xs = (np.arange(w, dtype=np.float32) + np.float32(dense['offset'])) * np.float32(sw)
            ys = (np.arange(h, dtype=np.float32) + np.float32(dense['offset'])) * np.float32(sh)
            points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
            s = _sigmoid(cls[0].transpose(1, 2, 0).reshape(-1, classes))
            valid = np.argwhere(s > cfg['score_thr'])  # (point, class) pairs, row-major as torch.nonzero
            top = np.argsort(-s[valid[:, 0], valid[:, 1]], kind='stable')
            if dense['nms_pre'] > 0:
                top = top[:dense['nms_pre']]
            keep, label = valid[top, 0], valid[top, 1]
            dist = reg[0].transpose(1, 2, 0).reshape(-1, 4)[keep].astype(np.float32)
            p = points[keep]
            box = np.stack([p[:, 0] - dist[:, 0], p[:, 1] - dist[:, 1], p[:, 0] + dist[:, 2], p[:, 1] + dist[:, 3]], 1)
            if cfg['clip_border']:
                ih, iw = meta['img_shape']
                box[:, 0::2] = np.clip(box[:, 0::2], 0, iw)
                box[:, 1::2] = np.clip(box[:, 1::2], 0, ih)
            boxes.append(box)
            scores.append(s[keep, label])
            labels.append(label)
            factors.append(_sigmoid(ctr[0].reshape(-1))[keep])
        boxes, scores = np.concatenate(boxes), np.concatenate(scores) * np.concatenate(factors)
        labels = np.concatenate(labels)
        sw, sh = meta['scale_factor']
        boxes = boxes * np.array([1 / sw, 1 / sh, 1 / sw, 1 / sh], dtype=np.float32)
        if dense['min_bbox_size'] >= 0:
            ok = ((boxes[:, 2] - boxes[:, 0]) > dense['min_bbox_size']) & \
                ((boxes[:, 3] - boxes[:, 1]) > dense['min_bbox_size'])
            boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
        keep = batched_nms(boxes, scores, labels, cfg['iou_thr'], cfg['class_agnostic'])[:cfg['max_per_img']]
        return dict(bboxes=boxes[keep].astype(np.float32), scores=scores[keep].astype(np.float32),
                    labels=labels[keep].astype(np.int64))

    def postprocess_masks(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, mask_logits: np.ndarray,
                          meta: Dict[str, Any]) -> Dict[str, np.ndarray]:
        """mmdet's ``FCNMaskHead.predict_by_feat``: boxes divided by the scale factor, mask probabilities (the
        mean over a cascade's mask heads) pasted into the original image and thresholded."""
        sw, sh = meta['scale_factor']
        boxes = boxes / np.array([sw, sh, sw, sh], dtype=np.float32)
        probs = _sigmoid(mask_logits)  # (N, S, m, m): a cascade's S stages are averaged, as mmdet merges them
        probs = probs[:, 0] if probs.shape[1] == 1 else probs.sum(axis=1) / np.float32(probs.shape[1])
        h, w = meta['ori_shape']
        masks = paste_masks(probs, boxes, h, w, self.recipe['detection']['masks']['threshold'])
        return dict(bboxes=boxes.astype(np.float32), scores=scores.astype(np.float32), labels=labels.astype(np.int64),
                    masks=masks)

    def postprocess(self, rois: np.ndarray, cls_scores: np.ndarray, deltas: np.ndarray,
                    meta: Dict[str, Any]) -> Dict[str, np.ndarray]:
        """mmdet's ``BBoxHead.predict_by_feat`` and ``multiclass_nms`` for one image's raw outputs."""
        cfg = self.recipe['detection']
        n, classes = len(rois), cfg['num_classes']
        empty = dict(bboxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                     labels=np.zeros(0, np.int64))
        if n == 0:
            return empty
        scores = _softmax(cls_scores.astype(np.float32))[:, :-1]
        per_class = 1 if cfg['reg_class_agnostic'] else classes
        boxes = decode_deltas(np.repeat(rois, per_class, axis=0), deltas.reshape(-1, 4), cfg['means'], cfg['stds'],
                              meta['img_shape'] if cfg['clip_border'] else None)
        sw, sh = meta['scale_factor']
        boxes = boxes * np.array([1 / sw, 1 / sh, 1 / sw, 1 / sh], dtype=np.float32)
        boxes = np.broadcast_to(boxes.reshape(n, per_class, 4), (n, classes, 4)).reshape(-1, 4)
        labels = np.broadcast_to(np.arange(classes), (n, classes)).reshape(-1)
        scores = scores.reshape(-1)
        valid = scores > cfg['score_thr']
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        if len(boxes) == 0:
            return empty
        keep = batched_nms(boxes, scores, labels, cfg['iou_thr'], cfg['class_agnostic'])[:cfg['max_per_img']]
        return dict(bboxes=boxes[keep], scores=scores[keep], labels=labels[keep].astype(np.int64))


class Segmentor(Model):
    """Semantic segmentation: ``segmentor(img)`` -> ``(H, W)`` int64 class map of the image (mmseg's
    ``postprocess_result``: logits cropped to the resized image, resized bilinearly to the original, argmax;
    one output channel: sigmoid above the head's threshold). Sliding-window models run on each window."""

    task = 'segmentation'

    def __call__(self, img: np.ndarray) -> np.ndarray:
        x, meta = self.preprocess(img)
        if self.recipe['segmentation']['mode'] == 'slide':
            return self.postprocess(self.slide(x)[0], meta)
        (logits, ) = self.run(x)
        return self.postprocess(logits[0], meta)

    def slide(self, x: np.ndarray) -> np.ndarray:
        """mmseg's ``slide_inference``: the graph on windows of ``crop_size`` every ``stride`` pixels (the last
        ones flush with the image), their logits summed and divided by the number of windows over each pixel."""
        cfg = self.recipe['segmentation']
        (h_crop, w_crop), (h_stride, w_stride) = cfg['crop_size'], cfg['stride']
        _, _, h_img, w_img = x.shape
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds, count = None, np.zeros((1, 1, h_img, w_img), dtype=np.float32)
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y2, x2 = min(h_idx * h_stride + h_crop, h_img), min(w_idx * w_stride + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                (logits, ) = self.run(np.ascontiguousarray(x[:, :, y1:y2, x1:x2]))
                if preds is None:
                    preds = np.zeros((1, logits.shape[1], h_img, w_img), dtype=np.float32)
                preds[:, :, y1:y2, x1:x2] += logits
                count[:, :, y1:y2, x1:x2] += 1
        return preds / count

    def postprocess(self, logits: np.ndarray, meta: Dict[str, Any]) -> np.ndarray:
        cfg = self.recipe['segmentation']
        h, w = meta['img_shape']
        logits = T.resize_bilinear(logits[:, :h, :w].astype(np.float32), tuple(meta['ori_shape']),
                                   cfg['align_corners'])
        if logits.shape[0] > 1:
            return logits.argmax(axis=0)
        return (_sigmoid(logits[0]) > cfg['threshold']).astype(np.int64)


class Classifier(Model):
    """Image classification: ``classifier(img)`` -> ``dict(scores=(C,) softmax, label=int)``."""

    task = 'classification'

    def __call__(self, img: np.ndarray) -> Dict[str, Any]:
        x, _ = self.preprocess(img)
        (logits, ) = self.run(x)
        scores = _softmax(logits[0].astype(np.float32))
        return dict(scores=scores, label=int(scores.argmax()))


class PoseEstimator(Model):
    """Top-down heatmap pose: ``pose(img, bboxes)`` -> ``dict(keypoints=(N, K, 2), keypoint_scores=(N, K),
    bboxes=(N, 4))`` for ``(N, 4)`` person boxes (the whole image without boxes), as mmpose's
    ``TopdownPoseEstimator.predict`` computes them: each box's crop (``GetBBoxCenterScale``, ``TopdownAffine``),
    the heatmaps of the crop and, with the flip test, of its mirror, decoded by the codec and mapped back."""

    task = 'pose'

    def __call__(self, img: np.ndarray, bboxes: Optional[np.ndarray] = None,
                 batch_size: int = 16) -> Dict[str, np.ndarray]:
        img = _check_image(img)
        if bboxes is None or len(bboxes) == 0:
            bboxes = np.array([[0, 0, img.shape[1], img.shape[0]]], dtype=np.float32)
        bboxes = np.asarray(bboxes, np.float32).reshape(-1, 4)
        steps = {s['type']: s for s in self.recipe['preprocess']['steps']}
        if 'topdown_affine' not in steps:
            raise RuntimeModelError('the pose recipe has no TopdownAffine step')
        affine = steps['topdown_affine']
        padding = steps.get('bbox_center_scale', dict(padding=1.0))['padding']
        crops, centers, scales = [], [], []
        for box in bboxes:
            center, scale = T.bbox_center_scale(box, padding)
            crop, scale = T.topdown_affine(img, center, scale, affine['input_size'], affine['udp'])
            crops.append(crop)
            centers.append(center)
            scales.append(scale)
        pre = self.recipe['preprocess']
        x, _ = T.normalize(crops, pre['mean'], pre['std'], pre['to_rgb'])
        heatmaps = np.concatenate([self.heatmaps(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        cfg = self.recipe['pose']
        keypoints, scores = [], []
        size = np.array(affine['input_size'], dtype=np.float32)
        for hm, center, scale in zip(heatmaps, centers, scales):
            kpts, s = decode(hm, cfg['codec'])
            keypoints.append(kpts / size * scale + center - 0.5 * scale)
            scores.append(s)
        return dict(keypoints=np.stack(keypoints).astype(np.float32), keypoint_scores=np.stack(scores),
                    bboxes=bboxes)

    def heatmaps(self, x: np.ndarray) -> np.ndarray:
        """``(N, K, h, w)`` heatmaps of a normalised crop batch, merged with the mirrored crops' under the flip
        test."""
        cfg = self.recipe['pose']
        if not cfg['flip_test']:
            return self.run(x)[0]
        both = self.run(np.concatenate([x, x[..., ::-1]]))[0]
        return merge_flipped(both[:len(x)], both[len(x):], cfg['flip_indices'], cfg['shift_heatmap'],
                             cfg.get('flip_mode', 'heatmap'))


class BottomupPoseEstimator(Model):
    """Bottom-up pose (DEKR, CID, associative embedding): ``pose(img)`` -> ``dict(keypoints=(N, K, 2),
    keypoint_scores=(N, K), bboxes=(N, 4), bbox_scores=(N,))`` in image pixels, as mmpose's
    ``BottomupPoseEstimator.predict`` computes them: the image warped into the input (``BottomupResize``); for
    DEKR, heatmaps and displacements (merged with the mirror image's under the flip test), the ``SPR`` decoding,
    the rescoring net and the pose NMS; for CID, the graph's per-person heatmaps decoded; for associative
    embedding, the keypoints grouped by their tags; then the input's pixels mapped back to the image. DEKR's and
    CID's ``keypoint_scores`` are the centre score times the keypoint's; the boxes are those around the
    keypoints, with score 1 (associative embedding: the mean score of the grouped keypoints, mmpose's
    ``bbox_scores``)."""

    task = 'bottomup_pose'

    def __call__(self, img: np.ndarray) -> Dict[str, np.ndarray]:
        x, meta = self.preprocess(img)
        if 'input_size' not in meta:
            raise RuntimeModelError('the bottom-up pose recipe has no BottomupResize step')
        cfg = self.recipe['pose']
        person_scores = None
        if cfg['codec']['type'] == 'DecoupledHeatmap':  # CID: flip test and decoupling in the graph
            keypoints, scores = decode_cid(*self.run(x)[:2], cfg['codec'], meta['input_size'])
        elif cfg['codec']['type'] == 'AssociativeEmbedding':  # flip test in the graph
            heatmaps, tags = self.run(x)
            keypoints, scores, person_scores = decode_associative_embedding(heatmaps[0], tags[0], cfg['codec'])
        else:
            keypoints, scores = self.dekr(x, cfg)
        scale, center = meta['input_scale'], meta['input_center']
        keypoints = keypoints / meta['input_size'] * scale + center - 0.5 * scale
        boxes = np.concatenate([keypoints.min(axis=1), keypoints.max(axis=1)], axis=1) if len(keypoints) else \
            np.zeros((0, 4), np.float32)
        return dict(keypoints=keypoints.astype(np.float32), keypoint_scores=scores.astype(np.float32),
                    bboxes=boxes.astype(np.float32),
                    bbox_scores=np.ones(len(keypoints), np.float32) if person_scores is None else
                    person_scores.astype(np.float32))

    def dekr(self, x: np.ndarray, cfg: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
        """DEKR's keypoints and scores in input pixels for the normalised input ``x``."""
        if cfg['flip_test']:
            heatmaps, displacements = self.run(np.concatenate([x, np.ascontiguousarray(x[..., ::-1])]))
            heatmaps, displacements = merge_flipped_dekr(heatmaps[:1], displacements[:1], heatmaps[1:],
                                                         displacements[1:], cfg['flip_indices'],
                                                         cfg['shift_heatmap'], x.shape[-1])
        else:
            heatmaps, displacements = self.run(x)
        keypoints, root_scores, keypoint_scores = decode_spr(heatmaps[0], displacements[0], cfg['codec'])
        if cfg.get('rescore') and cfg['skeleton'] and len(keypoints):
            if not hasattr(self, '_rescore'):
                self._rescore = RescoreNet(cfg['rescore'])
            root_scores = root_scores * self._rescore(keypoints, keypoint_scores, cfg['skeleton'])
        scores = root_scores[:, None] * keypoint_scores
        if len(keypoints) and cfg['nms_dist_thr'] > 0:
            keep = nearby_joints_nms(keypoints, keypoint_scores, cfg['nms_dist_thr'], cfg['nms_joints_thr'],
                                     cfg['max_num_people'])
            keypoints, scores = keypoints[keep], scores[keep]
        return keypoints, scores


class TopDownPose:
    """A person detector then a top-down pose model, as mmpose's ``Pose2DInferencer`` chains them: the
    detector's boxes of ``cat_ids`` scoring above ``bbox_thr``, NMS at ``nms_thr`` (mmpose's), then the pose
    model on each box (the whole image when no box is left).

    ``pipeline(img)`` -> the pose dict of :class:`PoseEstimator` plus ``bbox_scores``.
    """

    def __init__(self, detector: Detector, pose: 'PoseEstimator', cat_ids: Sequence[int] = (0, ),
                 bbox_thr: float = 0.3, nms_thr: float = 0.3) -> None:
        self.detector, self.pose = detector, pose
        self.cat_ids, self.bbox_thr, self.nms_thr = tuple(cat_ids), bbox_thr, nms_thr

    def __call__(self, img: np.ndarray) -> Dict[str, np.ndarray]:
        det = self.detector(img)
        dets = np.concatenate([det['bboxes'], det['scores'][:, None]], axis=1)
        dets = dets[np.isin(det['labels'], self.cat_ids) & (det['scores'] > self.bbox_thr)]
        dets = dets[person_nms(dets, self.nms_thr)]
        if len(dets) == 0:
            result = self.pose(img)
            result['bbox_scores'] = np.ones(1, np.float32)
            return result
        result = self.pose(img, dets[:, :4])
        result['bbox_scores'] = dets[:, 4]
        return result


_TASKS = {cls.task: cls for cls in (Detector, Segmentor, Classifier, PoseEstimator, BottomupPoseEstimator)}


def load(path: str, threads: Optional[int] = None) -> Model:
    """The predictor of an exported model's task (:class:`Detector`, :class:`Segmentor`,
    :class:`Classifier`, :class:`PoseEstimator` or :class:`BottomupPoseEstimator`).

    Raises:
        RuntimeModelError: The file cannot be opened or has no hrnet_mm recipe.
    """
    model = Model(path, threads)
    cls = _TASKS.get(model.recipe['task'])
    if cls is None:
        raise RuntimeModelError(f'{path}: unknown task {model.recipe["task"]!r}')
    model.__class__ = cls  # the subclasses add no state: reuse the session
    return model
