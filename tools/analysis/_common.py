"""Helpers shared by the scripts of ``tools/analysis``: config loading and model building."""
from __future__ import annotations

import copy
import os
import sys
from typing import Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

import hrnet_mm  # noqa: E402,F401  (registers the modules and the hrnet_mm:: config prefix)
from hrnet_mm.cli.checkpoint_checks import replace_syncbn  # noqa: E402

LIBRARIES = ('mmdet', 'mmseg', 'mmpose', 'mmpretrain')


class ToolError(Exception):
    """An error reported to the user as one line (no traceback)."""


def fail(prog: str, err: BaseException) -> None:
    """Prints ``prog: error: <err>`` to stderr and exits with status 1."""
    print(f'{prog}: error: {err}', file=sys.stderr)
    sys.exit(1)


def load_config(path: str):
    """Loads an mmengine config and checks that its ``default_scope`` is one of the OpenMMLab task libraries.

    Raises:
        ToolError: For a missing file, a config that does not parse, or an unknown scope.
    """
    from mmengine.config import Config

    if not os.path.isfile(path):
        raise ToolError(f'config not found: {path}')
    try:
        cfg = Config.fromfile(path)
    except Exception as e:  # a syntax error, a missing base, an unknown package prefix
        raise ToolError(f'cannot load config {path}: {type(e).__name__}: {e}'.splitlines()[0])
    scope = cfg.get('default_scope')
    if scope not in LIBRARIES:
        raise ToolError(f'unknown default_scope {scope!r} in {path}; expected one of {", ".join(LIBRARIES)}')
    if cfg.get('model') is None:
        raise ToolError(f'{path} has no model')
    return cfg


def model_config(cfg) -> dict:
    """The config's model as a plain dict: top-level data_preprocessor merged in (as the Runner does), SyncBN
    replaced by BN, the backbone's ``init_cfg`` and the model's ``pretrained`` dropped (nothing downloads)."""
    model = copy.deepcopy(cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else dict(cfg.model))
    if cfg.get('data_preprocessor') is not None:
        pre = cfg.data_preprocessor
        model.setdefault('data_preprocessor', pre.to_dict() if hasattr(pre, 'to_dict') else dict(pre))
    model = replace_syncbn(model)
    model.pop('pretrained', None)
    if isinstance(model.get('backbone'), dict):
        model['backbone']['init_cfg'] = None
    return model


def build_model(cfg, device: Optional[str] = None) -> torch.nn.Module:
    """Builds the config's model in its library's scope (on ``device``, e.g. ``'meta'``).

    Raises:
        ToolError: When the library is not installed or the model does not build.
    """
    from mmengine.config import ConfigDict

    from hrnet_mm.registry import build_in_scope

    library = cfg.default_scope
    try:
        if device is not None:
            with torch.device(device):
                return build_in_scope(library, ConfigDict(model_config(cfg)))
        return build_in_scope(library, ConfigDict(model_config(cfg)))
    except ModuleNotFoundError as e:
        raise ToolError(f'{library} is not installed ({e})')
    except Exception as e:
        raise ToolError(f'cannot build the model of the config: {type(e).__name__}: {e}'.splitlines()[0])


def default_shape(cfg) -> Tuple[int, int]:
    """A natural ``(H, W)`` input size for the config: the pose codec's input size, the segmentation crop size,
    1333x800 for detection and 224x224 for classification."""
    library = cfg.default_scope
    if library == 'mmpose' and cfg.get('codec') is not None and 'input_size' in cfg.codec:
        w, h = cfg.codec['input_size']
        return int(h), int(w)
    if library == 'mmseg' and cfg.get('crop_size') is not None:
        h, w = cfg.crop_size
        return int(h), int(w)
    if library == 'mmdet':
        return 800, 1333
    return 224, 224


def parse_shape(values) -> Optional[Tuple[int, int]]:
    """``[H]`` or ``[H, W]`` -> ``(H, W)``; ``None`` stays ``None``."""
    if values is None:
        return None
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ToolError(f'--shape takes H or H W, got {len(values)} numbers')
