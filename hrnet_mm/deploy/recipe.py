"""What the PyTorch-free runtime needs besides the graph: the recipe stored in an exported ONNX file.

:func:`runtime_recipe` reads a built model and its config and returns a JSON-serialisable dict that
:mod:`hrnet_mm_runtime` interprets: the test pipeline's image transforms (in the runtime's vocabulary), the
data preprocessor's normalisation and padding, the class or keypoint names and the task's post-processing
settings (score threshold, NMS, codec, flip test). The exporter stores it as the ONNX metadata entry
``hrnet_mm`` (:data:`METADATA_KEY`).

Recipe keys: ``format`` (:data:`FORMAT`), ``task``, ``config`` (file name), ``classes``, ``preprocess``
(``mean``, ``std``, ``to_rgb``, ``pad_divisor``, ``pad_value``, ``steps``), and one of ``detection``,
``segmentation``, ``pose`` (top-down and bottom-up), ``classification`` with that task's settings.
"""
from __future__ import annotations

import base64
from typing import Any, Dict, List

import torch.nn as nn

from .graphs import UnsupportedModelError

FORMAT = 'hrnet_mm.onnx/1'
METADATA_KEY = 'hrnet_mm'

# Steps of the test pipelines that do not touch the image array the runtime receives.
_PASS = {'LoadImageFromFile', 'LoadImage', 'InferencerLoader', 'LoadAnnotations', 'PackDetInputs', 'PackSegInputs',
         'PackPoseInputs', 'PackInputs', 'PackClsInputs'}


def _short(t: str) -> str:
    return t.split('.')[-1]


def _size(value: Any) -> List[int]:
    return [int(value), int(value)] if isinstance(value, (int, float)) else [int(v) for v in value]


def _backend(step: dict) -> str:
    """The resize backend of a step (bilinear interpolation only: what the runtime reproduces)."""
    mode = step.get('interpolation', 'bilinear')
    backend = step.get('backend', 'cv2') or 'cv2'
    if mode != 'bilinear' or backend not in ('cv2', 'pillow'):
        raise UnsupportedModelError(f'{_short(step["type"])} with interpolation={mode!r}, backend={backend!r}: the '
                                    f'runtime reproduces bilinear cv2 and Pillow resizing only')
    return backend


def _steps(pipeline: List[dict]) -> List[Dict[str, Any]]:
    """The test pipeline's image transforms as runtime steps."""
    steps = []
    for step in pipeline:
        kind = _short(step['type'])
        if kind in _PASS:
            continue
        if kind == 'Resize':
            backend = _backend(step)
            if step.get('scale') is None:
                raise UnsupportedModelError('Resize without scale (scale_factor only) is not supported by the runtime')
            steps.append(dict(type='resize', scale=_size(step['scale']), keep_ratio=bool(step.get('keep_ratio')),
                              backend=backend))
        elif kind == 'ResizeEdge':
            steps.append(dict(type='resize_edge', scale=int(step['scale']), edge=step.get('edge', 'short'),
                              backend=_backend(step)))
        elif kind == 'CenterCrop':
            if step.get('auto_pad', False) or step.get('crop_ratio_range') is not None:
                raise UnsupportedModelError('CenterCrop with auto_pad or crop_ratio_range is not supported')
            steps.append(dict(type='center_crop', size=_size(step['crop_size'])))
        elif kind == 'GetBBoxCenterScale':
            steps.append(dict(type='bbox_center_scale', padding=float(step.get('padding', 1.25))))
        elif kind == 'BottomupResize':
            if step.get('aug_scales'):
                raise UnsupportedModelError('BottomupResize with aug_scales (multi-scale test) is not supported')
            steps.append(dict(type='bottomup_resize', input_size=_size(step['input_size']),
                              size_factor=int(step.get('size_factor', 32)),
                              resize_mode=step.get('resize_mode', 'fit'), use_udp=bool(step.get('use_udp', False)),
                              pad_val=[float(v) for v in step.get('pad_val', (0, 0, 0))]))
        elif kind == 'TopdownAffine':
            steps.append(dict(type='topdown_affine', input_size=_size(step['input_size']),
                              udp=bool(step.get('use_udp', False))))
        else:
            raise UnsupportedModelError(f'the test pipeline step {kind} has no runtime equivalent; supported: '
                                        f'Resize, ResizeEdge, CenterCrop, GetBBoxCenterScale, TopdownAffine, '
                                        f'BottomupResize')
    return steps


def _preprocess(model, pipeline: List[dict]) -> Dict[str, Any]:
    pre = model.data_preprocessor
    normalize = getattr(pre, '_enable_normalize', False)
    mean = pre.mean if normalize else None
    std = pre.std if normalize else None
    to_rgb = any(bool(getattr(pre, name, False)) for name in ('_channel_conversion', 'channel_conversion', 'to_rgb'))
    test_cfg = getattr(pre, 'test_cfg', None) or {}
    divisor = int(getattr(pre, 'pad_size_divisor', 0) or test_cfg.get('size_divisor') or 1)
    if test_cfg.get('size') is not None:
        raise UnsupportedModelError('a data preprocessor padding to a fixed test size is not supported')
    pad_value = getattr(pre, 'pad_value', getattr(pre, 'pad_val', 0))
    return dict(mean=[float(v) for v in mean.flatten()] if mean is not None else None,
                std=[float(v) for v in std.flatten()] if std is not None else None,
                to_rgb=to_rgb, pad_divisor=divisor, pad_value=float(pad_value or 0),
                steps=_steps(pipeline))


def _pipeline(cfg) -> List[dict]:
    loader = cfg.get('test_dataloader') or {}
    dataset = loader.get('dataset', {}) if loader else {}
    while 'pipeline' not in dataset and 'dataset' in dataset:  # wrapped datasets
        dataset = dataset['dataset']
    pipeline = dataset.get('pipeline') or cfg.get('test_pipeline')
    if not pipeline:
        raise UnsupportedModelError('the config has no test pipeline (test_dataloader.dataset.pipeline)')
    return [dict(step) for step in pipeline]


def _detection(model) -> Dict[str, Any]:
    if not hasattr(model, 'roi_head'):  # FCOS: the dense head's maps are decoded by the runtime
        head, cfg = model.bbox_head, model.test_cfg
        strides = [list(s) if isinstance(s, (list, tuple)) else [s, s] for s in head.prior_generator.strides]
        return dict(num_classes=int(head.num_classes), score_thr=float(cfg.get('score_thr', 0)),
                    iou_thr=float(cfg.nms.iou_threshold), class_agnostic=bool(cfg.nms.get('class_agnostic', False)),
                    max_per_img=int(cfg.max_per_img), clip_border=bool(getattr(head.bbox_coder, 'clip_border', True)),
                    dense=dict(strides=strides, offset=float(head.prior_generator.offset),
                               nms_pre=int(cfg.get('nms_pre', -1)), min_bbox_size=float(cfg.get('min_bbox_size', -1)),
                               centerness=True))
    rcnn = model.test_cfg.rcnn
    head = model.roi_head.bbox_head
    head = head[-1] if isinstance(head, nn.ModuleList) else head  # a cascade's last stage decodes the boxes
    coder = head.bbox_coder
    if type(coder).__name__ != 'DeltaXYWHBBoxCoder' or getattr(coder, 'add_ctr_clamp', False):
        raise UnsupportedModelError(f'the box head coder {type(coder).__name__} is not supported by the runtime')
    if rcnn.nms.get('type', 'nms') != 'nms' or getattr(head, 'custom_cls_channels', False):
        raise UnsupportedModelError('the runtime supports a softmax box head with plain NMS')
    masks = None
    if getattr(model.roi_head, 'with_mask', False):
        masks = dict(threshold=float(rcnn.mask_thr_binary))
    return dict(num_classes=int(head.num_classes), reg_class_agnostic=bool(head.reg_class_agnostic), masks=masks,
                means=[float(v) for v in coder.means], stds=[float(v) for v in coder.stds],
                clip_border=bool(getattr(coder, 'clip_border', True)), score_thr=float(rcnn.score_thr),
                iou_thr=float(rcnn.nms.iou_threshold), class_agnostic=bool(rcnn.nms.get('class_agnostic', False)),
                max_per_img=int(rcnn.max_per_img))


def _pose(model) -> Dict[str, Any]:
    codec = model.head.decoder
    kind = type(codec).__name__
    if kind == 'MSRAHeatmap':
        decoder = dict(type=kind, unbiased=bool(codec.unbiased), blur_kernel_size=int(codec.blur_kernel_size))
    elif kind == 'UDPHeatmap':
        decoder = dict(type=kind, heatmap_type=codec.heatmap_type, blur_kernel_size=int(codec.blur_kernel_size),
                       radius_factor=float(codec.radius_factor))
    else:
        raise UnsupportedModelError(f'the pose codec {kind} is not supported by the runtime (MSRAHeatmap, '
                                    f'UDPHeatmap)')
    decoder.update(input_size=_size(codec.input_size), heatmap_size=_size(codec.heatmap_size))
    test_cfg = model.test_cfg or {}
    meta = model.dataset_meta or {}
    flip_mode = test_cfg.get('flip_mode', 'heatmap')
    if test_cfg.get('flip_test', False) and flip_mode not in ('heatmap', 'udp_combined'):
        raise UnsupportedModelError(f"flip_mode={flip_mode!r}: the runtime flips 'heatmap' and 'udp_combined' maps")
    names = meta.get('keypoint_id2name') or {}
    return dict(codec=decoder, flip_test=bool(test_cfg.get('flip_test', False)), flip_mode=flip_mode,
                shift_heatmap=bool(test_cfg.get('shift_heatmap', False)),
                flip_indices=[int(i) for i in meta.get('flip_indices', [])],
                keypoint_names=[names[i] for i in sorted(names)],
                skeleton=[[int(a), int(b)] for a, b in meta.get('skeleton_links', [])])


def _array(t) -> Dict[str, Any]:
    """A float32 tensor as ``dict(shape, data)`` with the bytes in base64 (exact, and 4/3 of the binary size)."""
    a = t.detach().cpu().float().numpy()
    return dict(shape=list(a.shape), data=base64.b64encode(a.astype('<f4').tobytes()).decode('ascii'))


def _bottomup_pose(model) -> Dict[str, Any]:
    """The decoding settings of a bottom-up model: DEKR's ``SPR`` codec, flip test, pose NMS and rescoring net,
    CID's ``DecoupledHeatmap`` codec or the ``AssociativeEmbedding`` codec (the flip tests of CID and associative
    embedding run in the graph)."""
    codec = model.head.decoder
    kind = type(codec).__name__
    test_cfg = model.test_cfg or {}
    if test_cfg.get('multiscale_test', False):
        raise UnsupportedModelError('multiscale_test is not supported by the runtime')
    meta = model.dataset_meta or {}
    names = meta.get('keypoint_id2name') or {}
    count = model.head.num_keypoints
    common = dict(keypoint_names=[names[i] for i in sorted(names)] or [str(i) for i in range(count)],
                  skeleton=[[int(a), int(b)] for a, b in meta.get('skeleton_links', [])],
                  flip_test=bool(test_cfg.get('flip_test', False)))
    if kind == 'DecoupledHeatmap':
        return dict(common, codec=dict(type=kind, input_size=_size(codec.input_size),
                                       heatmap_size=_size(codec.heatmap_size),
                                       score_thr=float(test_cfg.get('score_threshold', 0.01))))
    if kind == 'AssociativeEmbedding':
        if codec.use_udp:
            raise UnsupportedModelError('AssociativeEmbedding with use_udp=True is not supported by the runtime')
        return dict(common, codec=dict(type=kind, input_size=_size(codec.input_size),
                                       heatmap_size=_size(codec.heatmap_size), nms_kernel=int(codec.decode_nms_kernel),
                                       topk=int(codec.decode_topk), keypoint_thr=float(codec.decode_keypoint_thr),
                                       tag_thr=float(codec.decode_tag_thr),
                                       center_shift=float(codec.decode_center_shift),
                                       max_instances=codec.decode_max_instances,
                                       keypoint_order=[int(i) for i in codec.decode_keypoint_order]))
    if kind != 'SPR' or not codec.generate_keypoint_heatmaps:
        raise UnsupportedModelError(f'bottom-up export needs the SPR codec with keypoint heatmaps (DEKR), the '
                                    f'DecoupledHeatmap codec (CID) or AssociativeEmbedding, got {kind}')
    rescore = None
    net = getattr(model.head, 'rescore_net', None)
    if net is not None:
        rescore = dict(norm_indexes=[int(i) for i in net.norm_indexes],
                       layers=[dict(weight=_array(layer.weight), bias=_array(layer.bias))
                               for layer in (net.l1, net.l2, net.l3)])
    return dict(common, codec=dict(type=kind, input_size=_size(codec.input_size),
                                   heatmap_size=_size(codec.heatmap_size), nms_kernel=int(codec.decode_nms_kernel),
                                   max_instances=int(codec.decode_max_instances), score_thr=float(codec.decode_thr)),
                shift_heatmap=bool(test_cfg.get('shift_heatmap', False)),
                flip_indices=[int(i) for i in meta.get('flip_indices', [])],
                nms_dist_thr=float(test_cfg.get('nms_dist_thr', 0) or 0),
                nms_joints_thr=test_cfg.get('nms_joints_thr'), max_num_people=int(test_cfg.get('max_num_people', 30)),
                rescore=rescore)


def _class_count(model, task: str) -> int:
    if task == 'detection':
        head = model.roi_head.bbox_head if hasattr(model, 'roi_head') else model.bbox_head
        return int((head[-1] if isinstance(head, nn.ModuleList) else head).num_classes)
    if task == 'segmentation':
        head = model.decode_head[-1] if isinstance(model.decode_head, nn.ModuleList) else model.decode_head
        return int(head.num_classes)
    if task == 'classification':
        return int(getattr(model.head, 'num_classes', 0))
    return 1


def _classes(model, cfg, task: str) -> List[str]:
    """The class names: the model's ``dataset_meta`` (from its checkpoint), else the config's test dataset
    ``metainfo``, whichever has as many names as the head has classes; numbers when neither has."""
    count = _class_count(model, task)
    loader = cfg.get('test_dataloader') or {}
    metainfo = (loader.get('dataset', {}) or {}).get('metainfo') or {}
    for names in ((getattr(model, 'dataset_meta', None) or {}).get('classes'), metainfo.get('classes')):
        if names is not None and len(names) == count:
            return [str(c) for c in names]
    return ['person'] if task in ('pose', 'bottomup_pose') else [str(i) for i in range(count)]


def runtime_recipe(model, cfg, task: str, config_name: str = '') -> Dict[str, Any]:
    """The runtime recipe of a built model (see the module docstring).

    Args:
        model: The mmdet/mmseg/mmpose/mmpretrain model the graph was built from.
        cfg: Its config (an ``mmengine.Config``): the test pipeline is read from it.
        task: The graph's task (:func:`hrnet_mm.deploy.graphs.build_graph`).
        config_name: Stored for the user's reference.

    Raises:
        UnsupportedModelError: A pipeline step or post-processing setting the runtime does not reproduce.
    """
    recipe: Dict[str, Any] = dict(format=FORMAT, task=task, config=config_name, classes=_classes(model, cfg, task),
                                  preprocess=_preprocess(model, _pipeline(cfg)))
    if task == 'detection':
        recipe['detection'] = _detection(model)
    elif task == 'segmentation':
        head = model.decode_head[-1] if isinstance(model.decode_head, nn.ModuleList) else model.decode_head
        test_cfg = model.test_cfg or {}
        recipe['segmentation'] = dict(align_corners=bool(getattr(model, 'align_corners', False)),
                                      threshold=float(getattr(head, 'threshold', 0.3) or 0.3),
                                      mode=test_cfg.get('mode', 'whole'))
        if recipe['segmentation']['mode'] == 'slide':
            recipe['segmentation'].update(crop_size=_size(test_cfg['crop_size']), stride=_size(test_cfg['stride']))
    elif task == 'pose':
        recipe['pose'] = _pose(model)
        if not recipe['pose']['keypoint_names']:
            count = model.head.out_channels // (3 if recipe['pose']['codec'].get('heatmap_type') == 'combined' else 1)
            recipe['pose']['keypoint_names'] = [str(i) for i in range(count)]
    elif task == 'bottomup_pose':
        recipe['pose'] = _bottomup_pose(model)
    elif task == 'classification':
        recipe['classification'] = dict(num_classes=_class_count(model, task))
    return recipe
