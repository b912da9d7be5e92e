"""Inferencers by name: each task library's own inferencer (and visualizer) for a weights-table name or a config.

* detection: ``mmdet.apis.DetInferencer``;
* segmentation: ``mmseg.apis.MMSegInferencer``;
* pose: ``mmpose.apis.inferencers.Pose2DInferencer``. A top-down model finds the objects with a detector first
  (``det_model``; for body and whole-body models by default hrnet_mm's Faster R-CNN HRNetV2p-W32 on COCO, class
  0 = person; for face, hand and animal models the whole image unless a detector is given) and runs on each box;
  ``det_model='whole_image'`` takes the whole image as the one box. Bottom-up models (DEKR, CID, AE) need no
  detector;
* classification: ``mmpretrain.apis.ImageClassificationInferencer``.

The weights are checked to fill the whole model (the inferencers load non-strictly and only warn).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any, Optional, Sequence, Union

from .models import ModelSource, check_weights, keep_default_scope, read_weights, resolve

#: The person detector of top-down pose models when none is given, and its person class index.
DEFAULT_PERSON_DETECTOR = 'faster-rcnn_hrnetv2p-w32-1x_coco'
PERSON_CLASS = 0


def is_top_down(cfg: Any) -> bool:
    """Whether a pose config estimates each person in a box (``data_mode='topdown'``) rather than all at once."""
    return cfg.get('data_mode', 'topdown') == 'topdown' and cfg.model.get('type') == 'TopdownPoseEstimator'


def object_type(cfg: Any) -> str:
    """What a pose config's dataset annotates, from the folder of its dataset class in mmpose (``body``,
    ``wholebody``, ``face``, ``hand``, ``animal``, ...), as mmpose's inferencers pick their default detector."""
    from mmpose.registry import DATASETS
    return DATASETS.get(cfg.dataset_type).__module__.split('datasets.')[-1].split('.')[0].lower()


@contextlib.contextmanager
def _quiet():
    """The libraries' warnings and prints while building (meta of random-weight models, checkpoint loading); the
    default scope they set is restored."""
    with keep_default_scope(), warnings.catch_warnings(record=True), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        yield


def get_inferencer(name_or_config: str, pretrained: Union[bool, str] = True, device: str = 'cpu',
                   det_model: Optional[str] = None, det_weights: Union[bool, str] = True,
                   det_cat_ids: Optional[Sequence[int]] = None) -> Any:
    """The task library's inferencer of a model; call it on images as that library documents.

    Args:
        name_or_config: A weights-table name or a config file (see :func:`hrnet_mm.get_model`).
        pretrained: ``True`` (the entry's weights), ``False`` (random) or a checkpoint path.
        device: ``'cpu'``, ``'cuda'``, ...
        det_model: Top-down pose only: the person detector, a name or an mmdet config; ``'whole_image'`` for none.
            Default :data:`DEFAULT_PERSON_DETECTOR`.
        det_weights: The detector's ``pretrained`` (``True``, ``False`` or a checkpoint path).
        det_cat_ids: The detector's class indices that are people (default ``(0,)``).

    Returns:
        ``DetInferencer``, ``MMSegInferencer``, ``Pose2DInferencer`` or ``ImageClassificationInferencer``, with
        ``source`` (:class:`~hrnet_mm.apis.models.ModelSource`) and, for pose, ``det_source`` (``None`` without a
        detector) set.
    """
    source = resolve(name_or_config, pretrained)
    state = read_weights(source)
    with _quiet():
        inferencer = _BUILD[source.scope](source, device, det_model, det_weights, det_cat_ids)
    check_weights(inferencer.model, source, state)
    inferencer.source = source
    return inferencer


def _det(source: ModelSource, device: str, *_: Any) -> Any:
    from mmdet.apis import DetInferencer
    return DetInferencer(model=source.config, weights=source.weights, device=device, show_progress=False)


def _seg(source: ModelSource, device: str, *_: Any) -> Any:
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=source.config, weights=source.weights, device=device)
    inferencer.show_progress = False
    return inferencer


def _cls(source: ModelSource, device: str, *_: Any) -> Any:
    from mmpretrain.apis import ImageClassificationInferencer
    return ImageClassificationInferencer(model=source.config, pretrained=source.weights or False, device=device)


def _pose(source: ModelSource, device: str, det_model: Optional[str], det_weights: Union[bool, str],
          det_cat_ids: Optional[Sequence[int]]) -> Any:
    from mmengine.config import Config
    from mmpose.apis.inferencers import Pose2DInferencer

    cfg, det_source = Config.fromfile(source.config), None
    if det_model is None and object_type(cfg) not in ('body', 'wholebody'):
        det_model = 'whole_image'  # faces, hands, animals: no default detector of hrnet_mm's; give one
    if is_top_down(cfg) and det_model not in ('whole_image', 'whole-image'):
        det_source = resolve(det_model or DEFAULT_PERSON_DETECTOR, det_weights)
        det_state = read_weights(det_source)
        if det_source.scope != 'mmdet':
            raise ValueError(f'det_model {det_model!r} is a {det_source.scope} model, not an mmdet detector')
        det_cat_ids = tuple(det_cat_ids) if det_cat_ids is not None else (PERSON_CLASS,)
        det_model = det_source.config
    else:
        det_model = 'whole_image'
    inferencer = Pose2DInferencer(model=source.config, weights=source.weights, device=device, det_model=det_model,
                                  det_weights=det_source.weights if det_source else None, det_cat_ids=det_cat_ids)
    if det_source is not None:
        check_weights(inferencer.detector.model, det_source, det_state)
    inferencer.det_source = det_source
    return inferencer


_BUILD = {'mmdet': _det, 'mmseg': _seg, 'mmpose': _pose, 'mmpretrain': _cls}
