"""Loading published weights into hrnet_mm modules with a report instead of silent ``strict=False``.

Published HRNet backbone checkpoints come in three shapes: a bare backbone state dict (official ImageNet
weights, with the classification head's keys beside it), a full model (``backbone.*`` beside ``neck.*``,
``head.*``), or either wrapped in ``{'state_dict': ...}``. :func:`load_pretrained` takes all three, skips
the keys that are expected not to fit (the ImageNet head, fusion paths an HRNetV1 does not build) and
reports them grouped, and raises :class:`CheckpointMismatchError` naming every other difference.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

# Keys of the classification heads that ImageNet checkpoints carry beside the backbone.
HEAD_PATTERNS = (r'^(incre_modules|downsamp_modules|final_layer|classifier)\.',
                 r'^(neck|head|fc|data_preprocessor)\.')


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the module (another width, task or architecture)."""


class CheckpointFileError(CheckpointMismatchError):
    """A checkpoint file that cannot be used at all: truncated, corrupt, an HTML page, or a hash mismatch."""


# A torch checkpoint is a zip archive (torch >= 1.6) or a pickle (legacy format, protocol 2+).
MAGIC = (b'PK\x03\x04', b'\x80')


def check_head(head: bytes, origin: str) -> None:
    """Raises :class:`CheckpointFileError` naming ``origin`` unless ``head`` (a file's first bytes) starts like a
    torch checkpoint: an HTML/XML page (an error or login page saved in its place) or an empty file is said so."""
    text = head.lstrip().lower()
    if text.startswith((b'<!doctype', b'<html', b'<?xml', b'<')):
        raise CheckpointFileError(f'{origin}: the file is an HTML/XML page, not a checkpoint (an error or login page '
                                  'saved in its place?)')
    if not head:
        raise CheckpointFileError(f'{origin}: the file is empty')
    if not head.startswith(MAGIC):
        raise CheckpointFileError(f'{origin}: not a PyTorch checkpoint (starts with {head[:8]!r})')


def read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """The state dict of the local checkpoint file ``path`` (memory-mapped where the format allows), unwrapped as
    :func:`unwrap_state_dict` does.

    Raises:
        CheckpointFileError: the file is not a checkpoint, cannot be read, or holds no weights.
    """
    with open(path, 'rb') as f:
        check_head(f.read(512), path)
    try:
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=False, mmap=True)
        except RuntimeError:  # older (non-zip) files cannot be memory-mapped
            ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        first = (str(exc).strip().splitlines() or [''])[0]
        raise CheckpointFileError(f'{path}: cannot be read as a checkpoint (truncated or corrupt?): '
                                  f'{type(exc).__name__}: {first}') from exc
    state = unwrap_state_dict(ckpt) if isinstance(ckpt, Mapping) else {}
    if not state:
        raise CheckpointFileError(f'{path}: holds no weights (no state dict of tensors)')
    return state


def compare_state(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
                  ) -> Tuple[List[str], List[str], List[str]]:
    """(names of ``model_state`` missing from ``state``, names with another shape, names that fit), with a DDP
    ``module.`` prefix removed from both; ``num_batches_tracked`` counters may be missing."""
    def strip(keys):
        keys = list(keys)
        return [k[len('module.'):] for k in keys] if keys and all(k.startswith('module.') for k in keys) else keys
    model_state = dict(zip(strip(model_state), model_state.values()))
    state = dict(zip(strip(state), state.values()))
    missing = [k for k in model_state if k not in state and not k.endswith('num_batches_tracked')]
    mismatched = [k for k in model_state if k in state and tuple(state[k].shape) != tuple(model_state[k].shape)]
    fitting = [k for k in model_state if k in state and k not in mismatched]
    return missing, mismatched, fitting


def summarize_report(report: Mapping[str, List[str]]) -> Dict[str, int]:
    """``{group: number of keys}`` of a :func:`match_state_dict` report (without the ``'used prefix'`` line)."""
    return OrderedDict((group, len(keys)) for group, keys in report.items() if group != 'used prefix')


def unwrap_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """Returns the state dict inside an mmengine/torch checkpoint, without a DDP ``module.`` prefix."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    state = checkpoint
    for key in ('state_dict', 'model'):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    state = OrderedDict((k, v) for k, v in state.items() if isinstance(v, torch.Tensor))
    if state and all(k.startswith('module.') for k in state):
        state = OrderedDict((k[len('module.'):], v) for k, v in state.items())
    return state


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))


def match_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], prefix: Optional[str] = None
                     ) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """Selects the part of ``state`` that belongs to ``module`` and groups what does not.

    Returns:
        The state dict to load and a report: ``{group name: [keys]}`` with the groups ``'used prefix'``,
        ``'skipped: ImageNet classification head'``, ``'skipped: other parts of a full model'``,
        ``'skipped: fusion not built for the selected outputs'``, ``'missing'``, ``'unexpected'`` and
        ``'shape mismatch'``. Only the last three are errors.
    """
    report: Dict[str, List[str]] = {}
    own = module.state_dict()
    if prefix is None and not any(k in own for k in state) and any(k.startswith('backbone.') for k in state):
        prefix = 'backbone.'
    if prefix:
        report['used prefix'] = [prefix]
        others = [k for k in state if not k.startswith(prefix)]
        state = _strip_prefix(state, prefix)
        if others:
            report['skipped: other parts of a full model'] = others
    head_re = re.compile('|'.join(HEAD_PATTERNS))
    head = [k for k in state if k not in own and head_re.match(k)]
    if head:
        report['skipped: ImageNet classification head'] = head
    unbuilt_re = _unbuilt_fusion_pattern(module)
    unbuilt = [k for k in state if k not in own and unbuilt_re is not None and unbuilt_re.match(k)]
    if unbuilt:
        report['skipped: fusion not built for the selected outputs'] = unbuilt
    skipped = set(head) | set(unbuilt)
    use = OrderedDict((k, v) for k, v in state.items() if k not in skipped)
    missing = [k for k in own if k not in use and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in use if k not in own]
    shapes = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
              for k, v in use.items() if k in own and v.shape != own[k].shape]
    for name, keys in (('missing', missing), ('unexpected', unexpected), ('shape mismatch', shapes)):
        if keys:
            report[name] = keys
    return OrderedDict((k, v) for k, v in use.items() if k in own), report


def _unbuilt_fusion_pattern(module: nn.Module):
    out_indices = getattr(module, 'out_indices', None)
    arch = getattr(module, 'arch_spec', None)
    if out_indices is None or arch is None or len(arch) < 2:
        return None
    last = len(arch)
    return re.compile(rf'^stage{last}\.{arch[-1].num_modules - 1}\.fuse_layers\.(\d+)\.')


def format_report(report: Mapping[str, List[str]], source: str, limit: int = 8) -> str:
    """One line per group, with up to ``limit`` key names each."""
    lines = [f'loading {source}:']
    for group, keys in report.items():
        shown = ', '.join(keys[:limit]) + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')
        lines.append(f'  {group}: {len(keys)}' + (f' [{shown}]' if group != 'used prefix' else f' {shown}'))
    return '\n'.join(lines)


ERROR_GROUPS = ('missing', 'unexpected', 'shape mismatch')


def load_state_dict_checked(module: nn.Module, checkpoint: Mapping, source: str = 'checkpoint',
                            prefix: Optional[str] = None, strict: bool = True, logger: str = 'current'
                            ) -> Dict[str, List[str]]:
    """Loads ``checkpoint`` into ``module`` after :func:`match_state_dict`; logs the report.

    Raises:
        CheckpointMismatchError: with ``strict`` (default), when any key is missing or unexpected or a
            shape differs; the message names the file and every group.
    """
    from mmengine.logging import print_log
    state, report = match_state_dict(module, unwrap_state_dict(checkpoint), prefix)
    text = format_report(report, source)
    errors = [g for g in ERROR_GROUPS if g in report]
    if errors and strict:
        raise CheckpointMismatchError(
            f'{text}\nthe checkpoint does not fit {module._get_name()} ({", ".join(errors)}): is it for '
            'another width, task or architecture? Pass strict=False to load what fits.')
    if not state:
        raise CheckpointMismatchError(f'{text}\nno key of the checkpoint fits {module._get_name()}')
    module.load_state_dict(state, strict=False)
    print_log(text if len(report) > 1 or errors else f'loaded {source}: {len(state)} tensors', logger=logger)
    return report


def load_pretrained(module: nn.Module, filename: str, prefix: Optional[str] = None,
                    map_location: str = 'cpu', strict: bool = True) -> Dict[str, List[str]]:
    """Reads ``filename`` (a path, URL, ``open-mmlab://`` or ``hrnet_mm://`` name) and loads it with a report."""
    from mmengine.runner.checkpoint import CheckpointLoader  # hrnet_mm:// is registered by `import hrnet_mm`
    try:
        checkpoint = CheckpointLoader.load_checkpoint(filename, map_location=map_location)
    except Exception as exc:
        raise CheckpointMismatchError(f'cannot read checkpoint {filename}: {type(exc).__name__}: {exc}') from exc
    return load_state_dict_checked(module, checkpoint, source=filename, prefix=prefix, strict=strict)
