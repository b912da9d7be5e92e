"""Checkpoint converters between the published HRNet layouts and hrnet_mm's configs, as tables of key rules.

Formats (``src``/``dst`` of :func:`convert_state_dict`):

* ``'official'`` / ``'timm'``: a bare ImageNet state dict of HRNet-Image-Classification or timm's
  ``hrnet_w*`` (``conv1.*``, ``stage4.*``, ``incre_modules.*``, ``downsamp_modules.*``, ``final_layer.*``,
  ``classifier.*``); both use the same keys.
* ``'mmdet'``, ``'mmseg'``, ``'mmpose'``, ``'mmpretrain'``: full-model checkpoints of those libraries' HRNet model
  zoos. Their keys already equal those of the matching hrnet_mm configs (which keep the peers' module layout;
  mmpretrain's head is hrnet_mm's ``HRFuseScales(layout='mmpretrain')``).
* ``'hrnet_mm'``: a model built from an hrnet_mm config.

Every conversion goes through ``'hrnet_mm'``. Where the official head's conv biases (downsampling and final
layers) meet mmpretrain's bias-free layout, the bias is folded into the following BatchNorm's running mean
(``BN(conv(x) + b)`` with mean ``m`` equals ``BN(conv(x))`` with mean ``m - b``), so eval-mode outputs stay equal;
the opposite direction writes zero biases.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..models.checkpoint import CheckpointMismatchError, unwrap_state_dict

FORMATS = ('official', 'timm', 'mmdet', 'mmseg', 'mmpose', 'mmpretrain', 'hrnet_mm')
IMAGENET_FORMATS = ('official', 'timm')
HEAD_LAYOUTS = ('mmpretrain', 'official')


@dataclass(frozen=True)
class Rule:
    """One key rule: keys matching the regex ``pattern`` are rewritten with ``re.sub(pattern, replace, key)``."""

    pattern: str
    replace: str


# official/timm ImageNet state dict -> mmpretrain ImageClassifier with HRFuseScales(layout='official').
IMAGENET_TO_HRNET_MM: Tuple[Rule, ...] = (
    Rule(r'^(incre_modules|downsamp_modules|final_layer)\.', r'neck.0.\1.'),
    Rule(r'^classifier\.', 'head.fc.'),
    Rule(r'^', 'backbone.'),
)
HRNET_MM_TO_IMAGENET: Tuple[Rule, ...] = (
    Rule(r'^neck\.0\.(incre_modules|downsamp_modules|final_layer)\.', r'\1.'),
    Rule(r'^head\.fc\.', 'classifier.'),
    Rule(r'^backbone\.', ''),
)
# HRFuseScales layout='official' -> layout='mmpretrain' (plus the bias folding of fold_head_biases).
OFFICIAL_HEAD_TO_MMPRETRAIN: Tuple[Rule, ...] = (
    Rule(r'^neck\.0\.incre_modules\.', 'neck.0.increase_layers.'),
    Rule(r'^neck\.0\.downsamp_modules\.(\d+)\.0\.', r'neck.0.downsample_layers.\1.conv.'),
    Rule(r'^neck\.0\.downsamp_modules\.(\d+)\.1\.', r'neck.0.downsample_layers.\1.bn.'),
    Rule(r'^neck\.0\.final_layer\.0\.', 'neck.0.final_layer.conv.'),
    Rule(r'^neck\.0\.final_layer\.1\.', 'neck.0.final_layer.bn.'),
)
MMPRETRAIN_HEAD_TO_OFFICIAL: Tuple[Rule, ...] = (
    Rule(r'^neck\.0\.increase_layers\.', 'neck.0.incre_modules.'),
    Rule(r'^neck\.0\.downsample_layers\.(\d+)\.conv\.', r'neck.0.downsamp_modules.\1.0.'),
    Rule(r'^neck\.0\.downsample_layers\.(\d+)\.bn\.', r'neck.0.downsamp_modules.\1.1.'),
    Rule(r'^neck\.0\.final_layer\.conv\.', 'neck.0.final_layer.0.'),
    Rule(r'^neck\.0\.final_layer\.bn\.', 'neck.0.final_layer.1.'),
)
# Keys that tell which library's task model a full checkpoint belongs to.
TASK_MARKERS = (
    ('mmseg', r'^(decode_head|auxiliary_head)\.'),
    ('mmdet', r'^(rpn_head|roi_head|bbox_head|mask_head)\.'),
    ('mmpose', r'^head\.(final_layer|deconv_layers|conv_layers)\.'),
    ('mmpretrain', r'^head\.fc\.'),
    ('official', r'^(classifier|incre_modules)\.'),
)


def apply_rules(state: Mapping[str, torch.Tensor], rules: Sequence[Rule]) -> Dict[str, torch.Tensor]:
    """Renames every key by the first rule whose pattern matches it; keys no rule matches stay as they are."""
    out: Dict[str, torch.Tensor] = OrderedDict()
    compiled = [(re.compile(r.pattern), r.replace) for r in rules]
    for key, value in state.items():
        new = key
        for regex, replace in compiled:
            if regex.search(key):
                new = regex.sub(replace, key, count=1)
                break
        if new in out:
            raise CheckpointMismatchError(f'key rules map two keys to {new!r}')
        out[new] = value
    return out


def detect_format(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The library whose task model ``state`` looks like (``None`` for a bare backbone or an unknown layout)."""
    for name, pattern in TASK_MARKERS:
        if any(re.match(pattern, k) for k in state):
            return name
    return None


def head_layout(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``'official'`` or ``'mmpretrain'`` for an hrnet_mm/mmpretrain classifier state dict, else ``None``."""
    if any(k.startswith('neck.0.incre_modules.') for k in state):
        return 'official'
    if any(k.startswith('neck.0.increase_layers.') for k in state):
        return 'mmpretrain'
    return None


def fold_head_biases(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official head -> mmpretrain head: renames, and folds each conv bias into the next BN's running mean."""
    out = apply_rules(state, OFFICIAL_HEAD_TO_MMPRETRAIN)
    for key in [k for k in out if re.match(r'^neck\.0\.(downsample_layers\.\d+|final_layer)\.conv\.bias$', k)]:
        bias = out.pop(key)
        mean_key = key[:-len('conv.bias')] + 'bn.running_mean'
        if mean_key not in out:
            raise CheckpointMismatchError(f'{key} has no BatchNorm {mean_key} to fold into')
        out[mean_key] = out[mean_key] - bias.to(out[mean_key].dtype)
    return out


def unfold_head_biases(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """mmpretrain head -> official head: renames and adds the official layout's conv biases as zeros."""
    out: Dict[str, torch.Tensor] = OrderedDict()
    for key, value in apply_rules(state, MMPRETRAIN_HEAD_TO_OFFICIAL).items():
        out[key] = value
        if re.match(r'^neck\.0\.(downsamp_modules\.\d+|final_layer)\.0\.weight$', key):
            out[key[:-len('weight')] + 'bias'] = torch.zeros(value.shape[0], dtype=value.dtype)
    return out


def _require(state: Mapping[str, torch.Tensor], ok: bool, src: str, what: str, source: str) -> None:
    if not ok:
        sample = ', '.join(list(state)[:4])
        raise CheckpointMismatchError(f'{source}: not {what} (keys begin {sample}); is --from {src} right?')


def to_hrnet_mm(state: Mapping[str, torch.Tensor], src: str, head: Optional[str] = None,
                source: str = 'checkpoint') -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Converts a ``src``-format state dict to hrnet_mm's configs; returns it and notes on what changed.

    Args:
        state: The state dict.
        src: One of :data:`FORMATS`.
        head: The hrnet_mm classification head layout wanted (``'mmpretrain'``, as in hrnet_mm's configs, or
            ``'official'``); ``None`` keeps the source's layout where it has one (mmpretrain for official/timm).
        source: The file name, for messages.
    """
    if src not in FORMATS:
        raise ValueError(f'unknown format {src!r}; expected one of {FORMATS}')
    notes: List[str] = []
    detected = detect_format(state)
    if src in IMAGENET_FORMATS:
        _require(state, 'conv1.weight' in state and any(k.startswith('stage4.') for k in state), src,
                 f'a bare {src} ImageNet HRNet state dict', source)
        state = apply_rules(state, IMAGENET_TO_HRNET_MM)
        notes.append(f'{src} ImageNet keys -> hrnet_mm classifier (backbone., neck.0., head.fc.)')
        head = head or 'mmpretrain'
    elif src != 'hrnet_mm':
        if detected not in (None, src) and not (src == 'mmpose' and detected == 'mmpretrain'):
            raise CheckpointMismatchError(f'{source}: keys look like a {detected} model, not {src} '
                                          f'(e.g. {next(k for k in state if _marks(k, detected))})')
        if src == 'mmpretrain' and head_layout(state) is None:
            raise CheckpointMismatchError(f'{source}: not an mmpretrain HRNet classifier (no neck.0.increase_layers)')
    layout = head_layout(state)
    if head is not None and layout is not None and head != layout:
        state = fold_head_biases(state) if head == 'mmpretrain' else unfold_head_biases(state)
        notes.append(f'classification head layout {layout} -> {head}' +
                     (' (conv biases folded into BN running means)' if head == 'mmpretrain' else
                      ' (zero conv biases added)'))
    if not notes:
        notes.append(f'keys already match hrnet_mm\'s configs ({src}); nothing changed')
    return state, notes


def _marks(key: str, fmt: Optional[str]) -> bool:
    return any(name == fmt and re.match(p, key) for name, p in TASK_MARKERS)


def from_hrnet_mm(state: Mapping[str, torch.Tensor], dst: str, source: str = 'checkpoint'
                  ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Converts an hrnet_mm model's state dict to the ``dst`` library's layout; returns it and notes."""
    if dst not in FORMATS:
        raise ValueError(f'unknown format {dst!r}; expected one of {FORMATS}')
    layout = head_layout(state)
    if dst in IMAGENET_FORMATS:
        _require(state, layout is not None and any(k.startswith('head.fc.') for k in state), 'hrnet_mm',
                 'an hrnet_mm ImageNet classifier (backbone + HRFuseScales + LinearClsHead)', source)
        if layout == 'mmpretrain':
            state = unfold_head_biases(state)
        return apply_rules(state, HRNET_MM_TO_IMAGENET), [f'hrnet_mm classifier -> {dst} ImageNet keys']
    if dst == 'mmpretrain' and layout == 'official':
        return fold_head_biases(state), ['classification head layout official -> mmpretrain (biases folded)']
    return OrderedDict(state), [f'keys already match {dst}; nothing changed']


def convert_state_dict(state: Mapping[str, torch.Tensor], src: str, dst: str, head: Optional[str] = None,
                       source: str = 'checkpoint') -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Converts ``state`` from ``src`` to ``dst`` (any two of :data:`FORMATS`, through hrnet_mm's layout).

    Returns:
        The converted state dict and human-readable notes; the notes say ``nothing changed`` when the keys
        already matched.
    """
    mid, notes = to_hrnet_mm(state, src, head=head if dst == 'hrnet_mm' else None, source=source)
    if dst == 'hrnet_mm':
        return mid, notes
    out, more = from_hrnet_mm(mid, dst, source=source)
    notes = [n for n in notes + more if 'nothing changed' not in n] or [f'keys already match {dst}; nothing changed']
    return out, notes


def changed(notes: Sequence[str]) -> bool:
    """Whether a conversion's notes say that any key or value changed."""
    return not any('nothing changed' in n for n in notes)


def convert_checkpoint(checkpoint: Mapping, src: str, dst: str, head: Optional[str] = None,
                       source: str = 'checkpoint') -> Tuple[dict, List[str]]:
    """Converts a loaded checkpoint; the result is ``{'state_dict', 'meta'}``, or a bare state dict for
    official/timm (as those projects publish them). Optimizer and other training state is dropped."""
    state = unwrap_state_dict(checkpoint)
    if not state:
        raise CheckpointMismatchError(f'{source}: no tensors found in the checkpoint')
    out, notes = convert_state_dict(state, src, dst, head=head, source=source)
    if dst in IMAGENET_FORMATS:
        return out, notes
    meta = dict(checkpoint.get('meta') or {}) if isinstance(checkpoint.get('meta'), Mapping) else {}
    meta['hrnet_mm_converted'] = dict(src=src, dst=dst, notes=notes)
    return {'state_dict': out, 'meta': meta}, notes
