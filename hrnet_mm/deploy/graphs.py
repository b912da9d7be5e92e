"""Whole models as export graphs: an image batch in, the task head's raw tensors out.

:func:`build_graph` wraps a built mmdet/mmseg/mmpose/mmpretrain model (eval mode) in a module that ONNX
exporters trace from the normalised image to the tensors before the task's post-processing; the
PyTorch-free runtime (:mod:`hrnet_mm_runtime`) does that post-processing. The graphs:

* :class:`ClassifierGraph` (``ImageClassifier``): ``logits`` ``(N, num_classes)``.
* :class:`SegmentorGraph` (``EncoderDecoder``, ``CascadeEncoderDecoder``): ``seg_logits`` ``(N, C, H, W)``,
  the last decode head's logits resized to the input (as mmseg's ``decode_head.predict`` does before it crops
  and rescales to the original image). In sliding-window mode the runtime runs the graph on each window.
* :class:`PoseGraph` (``TopdownPoseEstimator`` with a heatmap head): ``heatmaps`` ``(N, K, h, w)``. The
  flip test is the runtime's: it runs the image and its mirror as one batch.
* :class:`BottomupPoseGraph` (``BottomupPoseEstimator`` with DEKR's head): ``heatmaps`` ``(N, K + 1, h, w)``
  (the keypoints' maps, then the people's centres) and ``displacements`` ``(N, 2K, h, w)`` (each keypoint's
  offset from the centre at that pixel, in heatmap pixels). The head's deformable convolutions run on
  torchvision's operator, exported as ONNX ``DeformConv`` (opset 19; :mod:`hrnet_mm.deploy.deform_conv`).
  The flip test is the runtime's.
* :class:`CIDGraph` (``BottomupPoseEstimator`` with CID's head): one image in; ``instance_heatmaps``
  ``(M, K, h, w)``, ``instance_scores`` ``(M,)`` and ``instance_coords`` ``(M, 2)`` of the ``max_instances``
  highest centres (the runtime keeps those above the score threshold). CID's flip test, centre selection and
  instance decoupling run in the graph.
* :class:`AssociativeEmbeddingGraph` (``BottomupPoseEstimator`` with ``AssociativeEmbeddingHead``): one image
  in; ``heatmaps`` ``(1, K, H', W')`` and ``tags`` ``(1, L * K, H', W')`` after mmpose's flip test (the
  mirror's maps flipped back; heatmaps averaged, tags concatenated: ``L`` is 2 with the flip test) and, with
  ``restore_heatmap_size``, resized to the input (``H' = H``). The grouping is the runtime's.
* :class:`TwoStageDetectorGraph` (Faster R-CNN: ``RPNHead`` and ``StandardRoIHead``; Cascade R-CNN:
  ``CascadeRoIHead``):
  inputs ``input`` ``(1, 3, H, W)`` and ``img_shape`` ``(2,)`` (height and width of the image inside the
  padded input, float). It runs mmdet's RPN proposal step (per level top ``nms_pre`` scores, delta decoding
  clipped to ``img_shape``, the ``min_bbox_size`` filter, NMS per level, ``max_per_img``) and the RoI box
  head on the proposals' RoIAlign features, with torchvision's ``nms`` and ``roi_align`` (equal to mmcv's:
  ``aligned=True`` and ``sampling_ratio=0`` give the same features, the same NMS keeps the same boxes).
  Outputs ``rois`` ``(R, 4)`` (input pixels), ``cls_scores`` ``(R, num_classes + 1)`` (logits),
  ``bbox_deltas`` ``(R, 4 * num_classes)`` (or ``(R, 4)`` class-agnostic) and the ``proposals``. Cascade
  R-CNN's stages run in the graph too.
* :class:`MaskRCNNGraph` (Mask R-CNN, Cascade Mask R-CNN and HTC, with its semantic branch and mask information
  flow): the mask head needs the final boxes, so mmdet's box post-processing (per-class NMS included) runs in
  the graph; outputs
  ``boxes`` ``(N, 4)``, ``scores``, ``labels`` and ``mask_logits`` ``(N, S, 28, 28)``, each mask head's
  logits of the box's class.
* :class:`DenseDetectorGraph` (FCOS): each pyramid level's class, distance and centerness maps.
"""
from __future__ import annotations

import copy
import math
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .deform_conv import MIN_OPSET, swap_deform_convs


class UnsupportedModelError(ValueError):
    """The model has no whole-model export graph (the message names what is supported)."""


class ClassifierGraph(nn.Module):
    """mmpretrain ``ImageClassifier``: ``(N, 3, H, W)`` image -> ``(N, num_classes)`` logits."""

    output_names = ('logits', )

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, mode='tensor')


class SegmentorGraph(nn.Module):
    """mmseg segmentor: ``(N, 3, H, W)`` image -> ``(N, C, H, W)`` logits of the last decode head, resized
    bilinearly to the input (``align_corners`` of the model)."""

    output_names = ('seg_logits', )

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.align_corners = bool(getattr(model, 'align_corners', False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x, mode='tensor')
        return F.interpolate(logits, size=x.shape[2:], mode='bilinear', align_corners=self.align_corners)


class PoseGraph(nn.Module):
    """mmpose top-down heatmap model: ``(N, 3, H, W)`` crops -> ``(N, K, h, w)`` heatmaps."""

    output_names = ('heatmaps', )

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, None, mode='tensor')


class BottomupPoseGraph(nn.Module):
    """mmpose bottom-up DEKR model: ``(N, 3, H, W)`` image -> ``heatmaps`` ``(N, K + 1, H / 4, W / 4)`` and
    ``displacements`` ``(N, 2K, H / 4, W / 4)`` (``DEKRHead.forward``). Built on a copy of the model whose
    deformable convolutions are :class:`~hrnet_mm.deploy.deform_conv.DeformConv`."""

    output_names = ('heatmaps', 'displacements')
    min_opset = MIN_OPSET

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        swap_deform_convs(self.model)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        heatmaps, displacements = self.model.head.forward(self.model.extract_feat(x))
        return heatmaps, displacements


def _flip_indices(model: nn.Module, flip_test: bool, what: str) -> List[int]:
    """The dataset's keypoint flip order, which a graph with the flip test inside needs."""
    indices = (model.dataset_meta or {}).get('flip_indices')
    if flip_test and not indices:
        raise UnsupportedModelError(f'{what} flip test: the model has no dataset_meta flip_indices (load a '
                                    f'checkpoint or set the test dataset metainfo)')
    return [int(i) for i in indices or []]


class CIDGraph(nn.Module):
    """mmpose CID model (``CIDHead.predict`` up to the decoding): ``(1, 3, H, W)`` image ->
    ``instance_heatmaps`` ``(M, K, H / 4, W / 4)`` (decoupled per person, flip-merged, smoothed),
    ``instance_scores`` ``(M,)`` and ``instance_coords`` ``(M, 2)`` (each centre's ``x, y`` heatmap pixel),
    ``M`` = ``test_cfg.max_instances``, highest score first.

    The centre map's local maxima use mmpose's size-dependent pooling window (3, 5 or 7 pixels above a mean
    heatmap side of 200 and 300); the graph pools with all three and selects by the map's size, so the choice
    follows the input size in the exported file as well. mmpose runs the decoupling on the centres above
    ``score_threshold`` only; it is per person, so the runtime's selection afterwards gives the same maps.
    """

    output_names = ('instance_heatmaps', 'instance_scores', 'instance_coords')
    one_image = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        cfg = model.test_cfg or {}
        self.flip_test = bool(cfg.get('flip_test', False))
        self.blur = int(cfg.get('blur_kernel_size', 3))
        self.max_instances = int(cfg.get('max_instances', 30))
        self.flip_indices = _flip_indices(model, self.flip_test, 'CID')

    def smooth(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """mmpose's ``smooth_heatmaps``: the mean of the maps and their box-blurred copies."""
        return (heatmaps + F.avg_pool2d(heatmaps, self.blur, 1, (self.blur - 1) // 2)) / 2.0

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        head = self.model.head
        if self.flip_test:
            feats = self.model.extract_feat(torch.cat([x, x.flip(-1)]))[-1]
            feats = torch.cat([feats[:1], feats[1:].flip(-1)])
        else:
            feats = self.model.extract_feat(x)[-1]
        iia = head.iia_module
        centres = iia.forward(feats)[:, -1:]  # the centre map (narrow(1, -1, 1) exports as an empty slice)
        if self.flip_test:
            centres = centres.mean(dim=0, keepdim=True)
        smoothed = self.smooth(centres)
        # the map's height and width as tensors computed from the data, so that both exporters keep them dynamic
        height = torch.ones_like(smoothed[0, 0, :, 0], dtype=torch.long).sum()
        width = torch.ones_like(smoothed[0, 0, 0, :], dtype=torch.long).sum()
        side = (height + width).float() / 2.0
        large, middle = (side > 300).to(smoothed), ((side > 200) & (side <= 300)).to(smoothed)
        maximum = F.max_pool2d(smoothed, 7, 1, 3) * large + F.max_pool2d(smoothed, 5, 1, 2) * middle + \
            F.max_pool2d(smoothed, 3, 1, 1) * (1 - large - middle)
        peaks = (smoothed * torch.eq(maximum, smoothed).float()).reshape(-1)
        scores, index = peaks.topk(self.max_instances, dim=0)
        coords = torch.stack((index % width, torch.div(index, width, rounding_mode='floor')), dim=1)
        instance_feats = iia._sample_feats(feats, coords)
        ids = torch.zeros_like(index)
        if self.flip_test:
            coords, ids = torch.cat((coords, coords)), torch.cat((ids, ids + 1))
        heatmaps = head.gfd_module(feats, instance_feats, coords, ids)
        if self.flip_test:
            heatmaps, flipped = torch.chunk(heatmaps, 2, dim=0)
            heatmaps = (heatmaps + flipped[:, self.flip_indices]) / 2.0
        return self.smooth(heatmaps), scores, coords[:self.max_instances]


class AssociativeEmbeddingGraph(nn.Module):
    """mmpose associative-embedding model (``AssociativeEmbeddingHead.predict`` up to the decoding):
    ``(1, 3, H, W)`` image -> ``heatmaps`` ``(1, K, H', W')`` and ``tags`` ``(1, L * K, H', W')``."""

    output_names = ('heatmaps', 'tags')
    one_image = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        cfg = model.test_cfg or {}
        self.flip_test = bool(cfg.get('flip_test', False))
        self.shift = bool(cfg.get('shift_heatmap', False))
        self.restore = bool(cfg.get('restore_heatmap_size', False))
        self.align_corners = bool(cfg.get('align_corners', False))
        self.flip_indices = _flip_indices(model, self.flip_test, 'associative-embedding')

    def resize(self, maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if not self.restore:
            return maps
        return F.interpolate(maps, size=like.shape[2:], mode='bilinear', align_corners=self.align_corners)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        from mmpose.models.utils.tta import flip_heatmaps

        head = self.model.head
        if not self.flip_test:
            heatmaps, tags = head.forward(self.model.extract_feat(x))
            return self.resize(heatmaps, x), self.resize(tags, x)
        heatmaps, tags = head.forward(self.model.extract_feat(torch.cat([x, x.flip(-1)])))
        flipped = flip_heatmaps(heatmaps[1:], flip_mode='heatmap', flip_indices=self.flip_indices,
                                shift_heatmap=self.shift)
        flipped_tags = head._flip_tags(tags[1:], flip_indices=self.flip_indices, shift_heatmap=self.shift)
        heatmaps = (self.resize(heatmaps[:1], x) + self.resize(flipped, x)).div(2)
        return heatmaps, torch.cat([self.resize(tags[:1], x), self.resize(flipped_tags, x)], dim=1)


class DenseDetectorGraph(nn.Module):
    """mmdet FCOS: ``(N, 3, H, W)`` image -> per pyramid level ``cls_scores{i}`` ``(N, classes, h, w)`` (logits),
    ``bbox_preds{i}`` ``(N, 4, h, w)`` (distances to the box sides in input pixels) and ``centerness{i}``
    ``(N, 1, h, w)`` (logits): the head's maps before mmdet's ``predict_by_feat``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        head = model.bbox_head
        if type(head).__name__ != 'FCOSHead' or type(head.bbox_coder).__name__ != 'DistancePointBBoxCoder':
            raise UnsupportedModelError(f'single-stage export supports FCOSHead, got {type(head).__name__}')
        if not head.use_sigmoid_cls or model.test_cfg.nms.get('type', 'nms') != 'nms':
            raise UnsupportedModelError('single-stage export supports sigmoid scores with plain NMS')
        self.model = model
        levels = len(head.prior_generator.strides)
        self.output_names = tuple(f'{name}{i}' for name in ('cls_scores', 'bbox_preds', 'centerness')
                                  for i in range(levels))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        cls_scores, bbox_preds, centerness = self.model(x, mode='tensor')
        return (*cls_scores, *bbox_preds, *centerness)


def _nms_per_group(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices kept by NMS within each group, by decreasing score (mmcv's ``batched_nms``: the boxes of each
    group are shifted apart by ``group * (max coordinate + 1)``, then one NMS runs). The boxes are clipped to
    the image, so the largest coordinate is at least 0, which also serves an empty set."""
    from torchvision.ops import nms

    offsets = groups.to(boxes) * (torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max() + 1)
    return nms(boxes + offsets[:, None], scores, iou)


def _decode_deltas(priors: torch.Tensor, deltas: torch.Tensor, means: torch.Tensor, stds: torch.Tensor,
                   max_ratio: float, img_shape: torch.Tensor) -> torch.Tensor:
    """mmdet's ``DeltaXYWHBBoxCoder.decode`` for ``(R, 4)`` priors and deltas, clipped to ``img_shape``
    ``(h, w)``."""
    d = deltas * stds + means
    pxy = (priors[:, :2] + priors[:, 2:]) * 0.5
    pwh = priors[:, 2:] - priors[:, :2]
    gxy = pxy + pwh * d[:, :2]
    gwh = pwh * d[:, 2:].clamp(min=-max_ratio, max=max_ratio).exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    limit = torch.stack([img_shape[1], img_shape[0], img_shape[1], img_shape[0]])
    return torch.minimum(boxes.clamp(min=0), limit)


def _box_coder(head: nn.Module, what: str) -> Tuple[List[float], List[float]]:
    coder = head.bbox_coder
    if type(coder).__name__ != 'DeltaXYWHBBoxCoder' or getattr(coder, 'add_ctr_clamp', False) or \
            not getattr(coder, 'clip_border', True):
        raise UnsupportedModelError(f'{what} export supports DeltaXYWHBBoxCoder (clipped, no centre clamp), got '
                                    f'{type(coder).__name__}')
    if getattr(head, 'custom_cls_channels', False) or getattr(head, 'custom_activation', False):
        raise UnsupportedModelError(f'{what} export supports softmax box heads')
    return list(coder.means), list(coder.stds)


class TwoStageDetectorGraph(nn.Module):
    """mmdet two-stage detector (one image): ``input`` ``(1, 3, H, W)`` and ``img_shape`` ``(2,)`` ->
    ``rois`` ``(R, 4)``, ``cls_scores`` ``(R, num_classes + 1)``, ``bbox_deltas`` ``(R, 4 * num_classes)`` (or
    ``(R, 4)`` class-agnostic), and ``proposals`` ``(R, 4)``.

    A Cascade R-CNN runs its stages as mmdet's ``CascadeRoIHead`` does: after each stage but the last the RoIs
    move by the stage's deltas of their top class; ``rois`` are the last stage's RoIs, ``cls_scores`` the mean
    of every stage's logits, ``bbox_deltas`` the last stage's. For Faster R-CNN ``rois`` are the proposals.

    Raises:
        UnsupportedModelError: An RPN or RoI head this graph does not reproduce.
    """

    output_names = ('rois', 'cls_scores', 'bbox_deltas', 'proposals')

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        rpn, roi = model.rpn_head, model.roi_head
        cfg = model.test_cfg.rpn
        if type(rpn).__name__ != 'RPNHead' or type(rpn.bbox_coder).__name__ != 'DeltaXYWHBBoxCoder':
            raise UnsupportedModelError(f'two-stage export supports RPNHead with DeltaXYWHBBoxCoder, got '
                                        f'{type(rpn).__name__}')
        if cfg.nms.get('type', 'nms') != 'nms' or not rpn.use_sigmoid_cls:
            raise UnsupportedModelError('two-stage export supports a sigmoid RPN with plain NMS')
        if type(roi).__name__ not in ('StandardRoIHead', 'CascadeRoIHead', 'HybridTaskCascadeRoIHead'):
            raise UnsupportedModelError(f'two-stage export supports StandardRoIHead, CascadeRoIHead and '
                                        f'HybridTaskCascadeRoIHead, got {type(roi).__name__}')
        if getattr(roi, 'with_shared_head', False):
            raise UnsupportedModelError('two-stage export does not support a shared RoI head')
        coder = rpn.bbox_coder
        if getattr(coder, 'add_ctr_clamp', False) or not getattr(coder, 'clip_border', True):
            raise UnsupportedModelError('two-stage export supports the RPN box coder without centre clamping')
        self.nms_pre = int(cfg.get('nms_pre', -1))
        self.min_size = float(cfg.get('min_bbox_size', -1))
        self.rpn_iou = float(cfg.nms.iou_threshold)
        self.max_proposals = int(cfg.max_per_img)
        self.register_buffer('means', torch.tensor(coder.means, dtype=torch.float32), persistent=False)
        self.register_buffer('stds', torch.tensor(coder.stds, dtype=torch.float32), persistent=False)
        self.max_ratio = abs(math.log(16 / 1000))  # DeltaXYWHBBoxCoder.decode's default wh_ratio_clip
        cascade = type(roi).__name__ != 'StandardRoIHead'
        self.box_heads = list(roi.bbox_head) if cascade else [roi.bbox_head]  # plain lists: no double registration
        # HTC: a semantic head's features pooled per RoI and added to the box (and mask) features
        self.semantic_fusion = tuple(roi.semantic_fusion) if getattr(roi, 'with_semantic', False) else ()
        if self.semantic_fusion:
            self.semantic_pooling = _RoIPooling(roi.semantic_roi_extractor)
        extractors = list(roi.bbox_roi_extractor) if cascade else [roi.bbox_roi_extractor]
        self.box_pooling = nn.ModuleList(_RoIPooling(e) for e in extractors)
        self.stage_agnostic = []  # each stage's means and stds are the buffers stage{i}_means / stage{i}_stds
        for stage, head in enumerate(self.box_heads):
            means, stds = _box_coder(head, 'two-stage')
            self.register_buffer(f'stage{stage}_means', torch.tensor(means, dtype=torch.float32), persistent=False)
            self.register_buffer(f'stage{stage}_stds', torch.tensor(stds, dtype=torch.float32), persistent=False)
            self.stage_agnostic.append(bool(head.reg_class_agnostic))

    def proposals(self, feats: List[torch.Tensor], img_shape: torch.Tensor) -> torch.Tensor:
        """mmdet's ``RPNHead.predict_by_feat`` for one image: ``(P, 4)`` proposals by decreasing score."""
        rpn = self.model.rpn_head
        cls_scores, bbox_preds = rpn(feats)
        boxes, scores, levels = [], [], []
        for level, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
            priors = rpn.prior_generator.single_level_grid_priors(cls.shape[-2:], level, device=cls.device)
            s = cls[0].permute(1, 2, 0).reshape(-1).sigmoid()
            d = reg[0].permute(1, 2, 0).reshape(-1, 4)
            if self.nms_pre > 0:  # the top nms_pre by score; padded so that k is a constant for every exporter
                s, keep = torch.cat([s, s.new_full((self.nms_pre, ), -1.0)]).topk(self.nms_pre)
                keep = keep[s >= 0]  # sigmoid scores are >= 0: the padding drops out where a level is smaller
                s = s[s >= 0]
                d, priors = d[keep], priors[keep]
            boxes.append(_decode_deltas(priors, d, self.means, self.stds, self.max_ratio, img_shape))
            scores.append(s)
            levels.append(torch.full_like(s, level, dtype=torch.long))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        if self.min_size >= 0:
            valid = ((boxes[:, 2] - boxes[:, 0]) > self.min_size) & ((boxes[:, 3] - boxes[:, 1]) > self.min_size)
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        keep = _nms_per_group(boxes, scores, levels, self.rpn_iou)[:self.max_proposals]
        return boxes[keep]

    def semantic(self, feats: List[torch.Tensor]):
        """HTC's semantic feature map (``None`` without a semantic head)."""
        return self.model.roi_head.semantic_head(feats)[1] if self.semantic_fusion else None

    def pool(self, pooling: nn.Module, feats: List[torch.Tensor], rois: torch.Tensor, semantic, branch: str):
        """RoI features, plus HTC's pooled semantic features where the ``branch`` ('bbox' or 'mask') fuses them."""
        pooled = pooling(feats, rois)
        if semantic is not None and branch in self.semantic_fusion:
            extra = self.semantic_pooling([semantic], rois)
            if self.semantic_pooling.out_size != pooling.out_size:  # static sizes: every exporter sees constants
                extra = F.adaptive_avg_pool2d(extra, pooling.out_size)
            pooled = pooled + extra
        return pooled

    def roi_stages(self, feats: List[torch.Tensor], proposals: torch.Tensor, img_shape: torch.Tensor,
                   semantic=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The RoI box head (every stage of a cascade) on ``(R, 4)`` proposals: ``(rois, cls_scores,
        bbox_deltas)`` as :meth:`forward` returns them."""
        rois, total = proposals, None
        stages = len(self.box_heads)
        for stage, (head, pooling) in enumerate(zip(self.box_heads, self.box_pooling)):
            cls, deltas = head(self.pool(pooling, feats, rois, semantic, 'bbox'))
            total = cls if total is None else total + cls
            if stage < stages - 1:
                d = deltas
                if not self.stage_agnostic[stage]:
                    label = cls[:, :-1].argmax(dim=1)
                    d = deltas.reshape(deltas.shape[0], -1, 4).gather(1, label[:, None, None].expand(-1, 1, 4))[:, 0]
                rois = _decode_deltas(rois, d, getattr(self, f'stage{stage}_means'),
                                      getattr(self, f'stage{stage}_stds'), self.max_ratio, img_shape)
        return rois, (total / float(stages) if stages > 1 else total), deltas

    def box_head(self, x: torch.Tensor, proposals: torch.Tensor,
                 img_shape: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`roi_stages` of an image on given proposals (the export check's PyTorch side)."""
        feats = list(self.model.extract_feat(x))
        return self.roi_stages(feats, proposals, img_shape, self.semantic(feats))

    def forward(self, x: torch.Tensor, img_shape: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats = list(self.model.extract_feat(x))
        proposals = self.proposals(feats, img_shape)
        rois, cls_scores, bbox_deltas = self.roi_stages(feats, proposals, img_shape, self.semantic(feats))
        return rois, cls_scores, bbox_deltas, proposals


class MaskRCNNGraph(TwoStageDetectorGraph):
    """mmdet Mask R-CNN and Cascade Mask R-CNN (one image): the two-stage graph, then mmdet's box
    post-processing in the graph (softmax, delta decoding clipped to ``img_shape``, the score threshold,
    per-class NMS, ``max_per_img``; in the resized image's pixels, as mmdet does before the mask head) and the
    mask head on the kept boxes (every stage's mask head of a cascade). Outputs ``boxes`` ``(N, 4)``, ``scores``
    ``(N,)``, ``labels`` ``(N,)`` and ``mask_logits`` ``(N, S, m, m)``: each mask head's logits of the box's class
    (S = 1, or the cascade's stages, whose probabilities mmdet averages)."""

    output_names = ('boxes', 'scores', 'labels', 'mask_logits')

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        roi, cfg = model.roi_head, model.test_cfg.rcnn
        head = self.box_heads[-1]
        if cfg.nms.get('type', 'nms') != 'nms':
            raise UnsupportedModelError('Mask R-CNN export supports plain NMS')
        if roi.share_roi_extractor:
            raise UnsupportedModelError('Mask R-CNN export needs its own mask RoI extractor')
        cascade = type(roi).__name__ != 'StandardRoIHead'
        self.mask_heads = list(roi.mask_head) if cascade else [roi.mask_head]
        extractors = list(roi.mask_roi_extractor) if cascade else [roi.mask_roi_extractor]
        self.mask_pooling = nn.ModuleList(_RoIPooling(e) for e in extractors)
        # HTC's mask information flow: each mask head gets the previous one's features; mmdet keeps the last mask
        self.info_flow = type(roi).__name__ == 'HybridTaskCascadeRoIHead'
        if self.info_flow and not roi.mask_info_flow:
            raise UnsupportedModelError('HTC export needs mask_info_flow=True (the recipe of every HTC config)')
        self.num_classes = int(head.num_classes)
        self.score_thr = float(cfg.score_thr)
        self.iou = float(cfg.nms.iou_threshold)
        self.class_agnostic_nms = bool(cfg.nms.get('class_agnostic', False))
        self.max_per_img = int(cfg.max_per_img)

    def forward(self, x: torch.Tensor, img_shape: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats = list(self.model.extract_feat(x))
        semantic = self.semantic(feats)
        rois, cls_scores, deltas = self.roi_stages(feats, self.proposals(feats, img_shape), img_shape, semantic)
        last = len(self.box_heads) - 1
        scores = cls_scores.softmax(-1)[:, :-1]
        per_class = 1 if self.stage_agnostic[-1] else self.num_classes
        boxes = _decode_deltas(rois.repeat_interleave(per_class, dim=0), deltas.reshape(-1, 4),
                               getattr(self, f'stage{last}_means'), getattr(self, f'stage{last}_stds'),
                               self.max_ratio, img_shape)
        boxes = boxes.reshape(-1, per_class, 4).expand(-1, self.num_classes, 4).reshape(-1, 4)
        labels = torch.arange(self.num_classes, device=x.device).repeat(rois.shape[0])
        scores = scores.reshape(-1)
        valid = scores > self.score_thr
        boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
        groups = torch.zeros_like(labels) if self.class_agnostic_nms else labels
        keep = _nms_per_group(boxes, scores, groups, self.iou)[:self.max_per_img]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if self.info_flow:  # HTC: the last stage's RoI features through every head, the last head's mask kept
            mask_feats = self.pool(self.mask_pooling[-1], feats, boxes, semantic, 'mask')
            last_feat = None
            for head in self.mask_heads:
                masks, last_feat = head(mask_feats, last_feat)
            outputs = [masks]
        else:
            outputs = [head(self.pool(pooling, feats, boxes, semantic, 'mask'))
                       for head, pooling in zip(self.mask_heads, self.mask_pooling)]
        logits = []
        for head, masks in zip(self.mask_heads, outputs):
            if not head.class_agnostic:
                masks = masks.gather(1, labels[:, None, None, None].expand(-1, 1, *masks.shape[2:]))
            logits.append(masks[:, :1])
        return boxes, scores, labels, torch.cat(logits, dim=1)


class _RoIPooling(nn.Module):
    """mmdet's ``SingleRoIExtractor`` with torchvision's ``roi_align``: each RoI pooled on the pyramid level its
    size maps to. Every level is pooled for every RoI and the right one selected, which gives the same numbers
    without a scatter."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        if type(extractor).__name__ != 'SingleRoIExtractor':
            raise UnsupportedModelError(f'two-stage export supports SingleRoIExtractor, got {type(extractor).__name__}')
        layer = extractor.roi_layers[0]
        if getattr(layer, 'pool_mode', 'avg') != 'avg' or type(layer).__name__ != 'RoIAlign':
            raise UnsupportedModelError('two-stage export supports RoIAlign (average pooling) RoI layers')
        self.strides = [float(s) for s in extractor.featmap_strides]
        self.finest_scale = float(extractor.finest_scale)
        self.out_size = tuple(layer.output_size)
        self.sampling_ratio = int(layer.sampling_ratio)
        self.aligned = bool(layer.aligned)

    def forward(self, feats: List[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        """``(R, C, s, s)`` features of ``(R, 4)`` boxes in input pixels."""
        from torchvision.ops import roi_align

        levels = len(self.strides)
        scale = torch.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
        target = torch.floor(torch.log2(scale / self.finest_scale + 1e-6)).clamp(min=0, max=levels - 1)
        boxes = torch.cat([torch.zeros_like(rois[:, :1]), rois], dim=1)
        out = None
        for level in range(levels):
            pooled = roi_align(feats[level], boxes, self.out_size, 1.0 / self.strides[level], self.sampling_ratio,
                               self.aligned)
            pooled = pooled * (target == level).to(pooled)[:, None, None, None]
            out = pooled if out is None else out + pooled
        return out


def build_graph(model: nn.Module) -> Tuple[nn.Module, str]:
    """The export graph of a built OpenMMLab model (put in eval mode) and its task name.

    Returns:
        ``(graph, task)`` with ``task`` one of ``'classification'``, ``'segmentation'``, ``'pose'``,
        ``'bottomup_pose'``, ``'detection'``.

    Raises:
        UnsupportedModelError: The model type has no graph (the message names the supported ones).
    """
    model.eval()
    kind = type(model).__name__
    module = type(model).__module__
    if kind == 'ImageClassifier':
        return ClassifierGraph(model), 'classification'
    if kind in ('EncoderDecoder', 'CascadeEncoderDecoder'):
        mode = model.test_cfg.get('mode', 'whole') if model.test_cfg else 'whole'
        if mode not in ('whole', 'slide'):
            raise UnsupportedModelError(f"segmentation export supports test_cfg.mode 'whole' and 'slide', got {mode!r}")
        return SegmentorGraph(model), 'segmentation'
    if kind == 'TopdownPoseEstimator':
        head = type(model.head).__name__
        if head != 'HeatmapHead':
            raise UnsupportedModelError(f'pose export supports top-down HeatmapHead models, got {head}')
        return PoseGraph(model), 'pose'
    if kind == 'BottomupPoseEstimator':
        head = type(model.head).__name__
        if head == 'CIDHead':
            return CIDGraph(model), 'bottomup_pose'
        if head == 'AssociativeEmbeddingHead':
            return AssociativeEmbeddingGraph(model), 'bottomup_pose'
        if head != 'DEKRHead':
            raise UnsupportedModelError(f'bottom-up pose export supports DEKR (DEKRHead), CID (CIDHead) and '
                                        f'associative embedding (AssociativeEmbeddingHead), got {head}; use '
                                        f'--part backbone or backbone+neck')
        return BottomupPoseGraph(model), 'bottomup_pose'
    if module.startswith('mmdet') and hasattr(model, 'rpn_head') and hasattr(model, 'roi_head'):
        if type(model.roi_head).__name__ not in ('StandardRoIHead', 'CascadeRoIHead', 'HybridTaskCascadeRoIHead'):
            raise UnsupportedModelError(f'detector export supports Faster, Mask, Cascade (Mask) R-CNN and HTC, '
                                        f'got {type(model.roi_head).__name__}; use --part backbone+neck')
        if model.roi_head.with_mask:
            return MaskRCNNGraph(model), 'detection'
        return TwoStageDetectorGraph(model), 'detection'
    if module.startswith('mmdet') and hasattr(model, 'bbox_head'):
        return DenseDetectorGraph(model), 'detection'
    raise UnsupportedModelError(
        f'no whole-model export for {kind}: supported are ImageClassifier, EncoderDecoder/'
        f'CascadeEncoderDecoder, TopdownPoseEstimator with HeatmapHead, BottomupPoseEstimator with DEKRHead, '
        f'CIDHead or AssociativeEmbeddingHead, (Cascade) Faster/Mask R-CNN, HTC, FCOS; '
        f'use --part backbone or backbone+neck')
