"""The rules that turn a peer library's HRNet config into an hrnet_mm config.

A generated config inherits the peer's config whole (``_base_ = '<library>::<path>'``) and overrides the model
only where hrnet_mm's modules take the place of the peer's:

* the backbone's ``type`` becomes ``hrnet_mm.HRNet``; every argument the peer wrote stays (``extra``,
  ``norm_cfg``, ``init_cfg``, ...), and the peer's *hidden* defaults that differ from hrnet_mm's are written
  out (:data:`HIDDEN_DEFAULTS`);
* the HRNet necks become hrnet_mm's (:data:`NECKS`): mmdet's ``HRFPN`` is :class:`~hrnet_mm.HRNetV2pNeck`,
  mmpretrain's ``HRFuseScales`` is :class:`~hrnet_mm.HRFuseScales`, mmpose's concatenating
  ``FeatureMapProcessor`` is :class:`~hrnet_mm.HRNetV2Neck`;
* mmseg's model-level ``pretrained`` moves into the backbone's ``init_cfg``.

Nothing else changes: heads, data, schedules and runtime settings are the peer's, and the state-dict keys are the
peer's too, so the peer's published checkpoints load with ``strict=True``. :func:`model_overrides` applies the
rules to one parsed peer model config and says why each value is written; ``tools/generate_zoo.py`` writes the
results (see :mod:`hrnet_mm.zoo.generate`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple

BACKBONE = 'hrnet_mm.HRNet'
LIBRARIES = ('mmdet', 'mmseg', 'mmpose', 'mmpretrain')
TASKS = {'mmdet': 'detection', 'mmseg': 'segmentation', 'mmpose': 'pose', 'mmpretrain': 'classification'}

# Peer neck type -> hrnet_mm's module with the same keys and outputs.
NECKS = {'HRFPN': 'hrnet_mm.HRNetV2pNeck', 'HRFuseScales': 'hrnet_mm.HRFuseScales',
         'FeatureMapProcessor': 'hrnet_mm.HRNetV2Neck'}


@dataclass(frozen=True)
class HiddenDefault:
    """A default of a peer's HRNet that hrnet_mm's ``HRNet`` does not share, written out when the peer's config
    leaves it out. ``key`` is a dotted path under ``model.backbone``; ``{last}`` stands for the last stage."""

    library: str
    key: str
    value: Any
    why: str


HIDDEN_DEFAULTS: Tuple[HiddenDefault, ...] = (
    HiddenDefault('mmdet', 'norm_eval', True, "mmdet's HRNet freezes its BN statistics by default"),
    HiddenDefault('mmseg', 'upsample_cfg', dict(mode='bilinear', align_corners=False),
                  "mmseg's HRNet fuses with bilinear upsampling"),
    HiddenDefault('mmpose', 'extra.{last}.multiscale_output', False,
                  "mmpose's HRNet returns the stride-4 map only by default"),
    HiddenDefault('mmpose', 'init_cfg', [dict(type='Normal', std=0.001, layer=['Conv2d']),
                                         dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])],
                  "mmpose's HRNet initialisation"),
)

Comments = Dict[str, str]


class RuleError(ValueError):
    """A peer config that the rules do not cover (a new module type or argument in a new release)."""


def _last_stage(extra: Mapping[str, Any]) -> str:
    stages = sorted((k for k in extra if k.startswith('stage') and k[5:].isdigit()), key=lambda k: int(k[5:]))
    if not stages:
        raise RuleError(f'backbone.extra has no stage entries: {sorted(extra)}')
    return stages[-1]


def _has(cfg: Mapping[str, Any], path: List[str]) -> bool:
    for part in path:
        if not isinstance(cfg, Mapping) or part not in cfg:
            return False
        cfg = cfg[part]
    return True


def _put(tree: Dict[str, Any], path: List[str], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = copy.deepcopy(value)


def _backbone(library: str, backbone: Mapping[str, Any]) -> Tuple[Dict[str, Any], Comments]:
    out: Dict[str, Any] = {'type': BACKBONE}
    notes: Comments = {}
    for rule in HIDDEN_DEFAULTS:
        if rule.library != library:
            continue
        key = rule.key
        if '{last}' in key:
            key = key.format(last=_last_stage(backbone.get('extra') or {}))
        path = key.split('.')
        if not _has(backbone, path):
            _put(out, path, rule.value)
            notes['backbone.' + path[0]] = rule.why
    return out, notes


def _channels(backbone: Mapping[str, Any]) -> List[int]:
    """Output channels of the last stage of a peer's ``extra`` (BASIC blocks: ``num_channels``)."""
    extra = backbone.get('extra')
    if not extra:
        raise RuleError('cannot derive the neck input channels: the backbone has no extra')
    stage = extra[_last_stage(extra)]
    if stage.get('block', 'BASIC') != 'BASIC':
        raise RuleError(f'last stage block {stage.get("block")!r}: only BASIC is expected')
    return [int(c) for c in stage['num_channels']]


def _neck(neck: Mapping[str, Any], backbone: Mapping[str, Any], where: str) -> Tuple[Dict[str, Any], bool]:
    """hrnet_mm's counterpart of one peer neck dict, and whether it must replace the peer's dict whole."""
    kind = neck.get('type')
    if kind == 'HRFPN':
        out = {'type': NECKS[kind]}
        if neck.get('norm_cfg') is not None:
            out['norm_cfg'] = None  # HRFPN stores norm_cfg but never applies it
        return out, False
    if kind == 'HRFuseScales':
        return {**copy.deepcopy(dict(neck)), 'type': NECKS[kind]}, True
    if kind == 'FeatureMapProcessor':
        args = {k: v for k, v in neck.items() if k != 'type'}
        plain = dict(concat=True, select_index=None, scale_factor=1.0, apply_relu=False)
        if not args.get('concat') or any(args.get(k, v) != v for k, v in plain.items()):
            raise RuleError(f'{where}: FeatureMapProcessor({args}) is not the HRNetV2 concatenation')
        out = {'_delete_': True, 'type': NECKS[kind], 'in_channels': _channels(backbone)}
        if 'align_corners' in args:
            out['align_corners'] = args['align_corners']
        return out, True
    if kind == 'GlobalAveragePooling':
        return copy.deepcopy(dict(neck)), True
    raise RuleError(f'{where}: no rule for neck type {kind!r}')


def model_overrides(library: str, model: Mapping[str, Any]) -> Tuple[Dict[str, Any], Comments]:
    """What an hrnet_mm config writes under ``model`` to run the peer's model ``model`` with hrnet_mm's modules.

    Args:
        library: ``'mmdet'``, ``'mmseg'``, ``'mmpose'`` or ``'mmpretrain'``.
        model: The peer config's ``model`` dict, fully parsed (its ``_base_`` files merged).

    Returns:
        The override dict (merged into the peer's model by mmengine's inheritance; ``_delete_`` where a dict is
        replaced whole) and ``{dotted key: why}`` for each value written for a reason other than a type swap.

    Raises:
        RuleError: the model holds something the rules do not cover.
    """
    if library not in LIBRARIES:
        raise RuleError(f'unknown library {library!r}; expected one of {LIBRARIES}')
    backbone = model.get('backbone') or {}
    if backbone.get('type') != 'HRNet':
        raise RuleError(f'the backbone is {backbone.get("type")!r}, not HRNet')
    out: Dict[str, Any] = {}
    pretrained = model.get('pretrained')
    if pretrained is not None:  # mmseg passes it on to the backbone, which takes init_cfg instead
        if backbone.get('init_cfg') is not None:
            raise RuleError('both model.pretrained and backbone.init_cfg are set')
        out['pretrained'] = None
    out['backbone'], notes = _backbone(library, backbone)
    if pretrained is not None:
        out['backbone']['init_cfg'] = dict(type='Pretrained', checkpoint=pretrained)
        notes['pretrained'] = "mmseg's model-level pretrained becomes the backbone's init_cfg"
    neck = model.get('neck')
    if isinstance(neck, Mapping):
        out['neck'], _ = _neck(neck, backbone, 'model.neck')
    elif isinstance(neck, (list, tuple)):
        out['neck'] = [_neck(n, backbone, f'model.neck[{i}]')[0] for i, n in enumerate(neck)]
    elif neck is not None:
        raise RuleError(f'model.neck of type {type(neck).__name__}')
    return out, notes
