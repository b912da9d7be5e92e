"""Whether a checkpoint fits the model of a config, checked before a run (``load_from``, ``tools/test.py``,
``tools/infer.py``), reported as one :class:`~hrnet_mm.cli.errors.UserInputError`."""
from __future__ import annotations

import os.path as osp
from typing import Any, Dict, List, Optional, Tuple

from .dataset_checks import is_remote
from .errors import UserInputError

# ------------------------------------------------------------------------------------------- checkpoints


def replace_syncbn(obj: Any) -> Any:
    """A copy of a config (dict/list tree) with every ``type='SyncBN'`` replaced by ``'BN'``.

    SyncBN needs a process group in its forward; BN has the same parameters and buffers, so a model built this way
    loads the same checkpoints in a single process (analysis tools, tests).
    """
    if isinstance(obj, dict):
        return {k: ('BN' if k == 'type' and v == 'SyncBN' else replace_syncbn(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [replace_syncbn(v) for v in obj]
    return obj


def _read_state(checkpoint: str) -> Dict[str, Any]:
    """The state dict of a local checkpoint file (:func:`hrnet_mm.models.checkpoint.read_checkpoint`)."""
    from ..models.checkpoint import CheckpointFileError, read_checkpoint
    try:
        return read_checkpoint(checkpoint)
    except CheckpointFileError as exc:
        raise UserInputError(f'cannot read checkpoint {exc}; is it a .pth file saved by tools/train.py?') from exc


def _compare_state(model: Any, state: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any], List[str], List[str]]:
    """(checkpoint state, model state, names missing from the checkpoint, names with other shapes), without a DDP
    ``module.`` prefix on either side."""
    from ..models.checkpoint import compare_state, unwrap_state_dict
    state, model_state = unwrap_state_dict(state), unwrap_state_dict(model.state_dict())
    missing, mismatched, _ = compare_state(model_state, state)
    return state, model_state, missing, mismatched


def _shape_example(state: Dict[str, Any], model_state: Dict[str, Any], mismatched: List[str]) -> str:
    k = mismatched[0]
    return f'e.g. {k}: checkpoint {tuple(state[k].shape)}, model {tuple(model_state[k].shape)}'


def check_load_from(model: Any, checkpoint: str, config: str) -> Optional[str]:
    """What ``load_from`` will load into ``model``, before training starts.

    Fine-tuning from a checkpoint with another head is normal (mmengine loads what fits and keeps the rest as
    initialized), so partial fits are a one-line summary, not an error. A checkpoint of which no weight fits is an
    error (usually a bare backbone file, which belongs in the backbone's ``init_cfg``, or another model).

    Returns:
        None when every weight fits, else the summary line.

    Raises:
        UserInputError: The file is not a checkpoint, or none of the model's weights are in it with their shapes.
    """
    if is_remote(checkpoint) or not osp.isfile(checkpoint):
        return None
    state, model_state, missing, mismatched = _compare_state(model, _read_state(checkpoint))
    fitting = [k for k in model_state if k in state and k not in mismatched]
    if not fitting:
        hint = ''
        if any(f'backbone.{k}' in model_state for k in state):
            hint = ("; it looks like a bare backbone: use model.backbone.init_cfg=dict(type='Pretrained', "
                    f"checkpoint='{checkpoint}') instead")
        raise UserInputError(f'load_from {checkpoint}: none of the weights of the model of {config} are in it with '
                             f'their shapes (model e.g. {next(iter(model_state), "?")}, checkpoint e.g. '
                             f'{next(iter(state), "?")}){hint}')
    if not missing and not mismatched:
        return None
    parts = [f'{len(fitting)} of {len(model_state)} weights load']
    if mismatched:
        parts.append(f'{len(mismatched)} with other shapes keep their initialization '
                     f'({_shape_example(state, model_state, mismatched)})')
    if missing:
        parts.append(f'{len(missing)} are not in the checkpoint (e.g. {missing[0]})')
    return f'load_from {checkpoint}: ' + '; '.join(parts)


def check_checkpoint_fits(model: Any, checkpoint: str, config: str) -> None:
    """Checks that ``checkpoint`` was saved from a model like ``model`` (same weight names and shapes).

    mmengine loads checkpoints non-strictly (warnings only), so testing the checkpoint of another config would
    evaluate a partly random model; this reports it as one error instead.

    Raises:
        UserInputError: The file is not a checkpoint, or weights of the model are missing or have other shapes.
    """
    if is_remote(checkpoint) or not osp.isfile(checkpoint):
        return
    state = _read_state(checkpoint)
    check_state_fits(model, state, checkpoint, config)


def _scope_of(model: Any) -> Optional[str]:
    """The task library a built model comes from (its class's top-level package)."""
    name = type(model).__module__.split('.')[0]
    return name if name in ('mmdet', 'mmseg', 'mmpose', 'mmpretrain') else None


def check_state_fits(model: Any, state: Dict[str, Any], checkpoint: str, config: str) -> None:
    """Checks that the weights ``state`` (read from ``checkpoint``) fill every parameter and buffer of ``model``
    with the right shapes; ``module.`` prefixes (DDP) are ignored on both sides.

    Raises:
        UserInputError: Weights of the model are missing from ``state`` or have other shapes.
    """
    state, model_state, missing, mismatched = _compare_state(model, state)
    if missing or mismatched:
        from ..zoo.convert import detect_format
        detail = []
        family, scope = detect_format(state), _scope_of(model)
        if family and scope and family != scope and not (family == 'mmpretrain' and scope == 'mmpose'):
            detail.append(f'it holds a {family} model, the config builds a {scope} one')
        if mismatched:
            example = _shape_example(state, model_state, mismatched)
            detail.append(f'{len(mismatched)} weights with other shapes ({example})')
        if missing:
            detail.append(f'{len(missing)} of {len(model_state)} weights missing (e.g. {missing[0]})')
        raise UserInputError(f'checkpoint {checkpoint} does not fit the model of {config}: {"; ".join(detail)}; '
                             'was it trained with another config?')
