"""hrnet_mm's registry scope.

Modules are registered in a child of mmengine's root ``MODELS`` registry under the scope ``hrnet_mm``, so
configs of every task library build them as ``type='hrnet_mm.HRNet'`` whatever their ``default_scope``:
mmengine resolves the ``hrnet_mm.`` prefix from the root and imports ``hrnet_mm.registry`` (and, through
``locations``, ``hrnet_mm.models``) on first use. A plain ``type='HRNet'`` under ``default_scope='mmdet'``
would build mmdet's own copy instead.
"""
from __future__ import annotations

import importlib
from typing import Any

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import DefaultScope, Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='hrnet_mm', locations=['hrnet_mm.models'])
# runner hooks: ``custom_hooks = [dict(type='hrnet_mm.DeployHook', ...)]`` (hrnet_mm.deploy.hook)
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='hrnet_mm', locations=['hrnet_mm.deploy.hook'])


def build_in_scope(library: str, cfg: dict) -> Any:
    """Builds ``cfg`` through ``library``'s own MODELS registry with ``library`` as the default scope,
    as that library's runner would (``library`` is ``'mmdet'``, ``'mmseg'``, ``'mmpose'`` or ``'mmpretrain'``)."""
    registry = importlib.import_module(f'{library}.registry').MODELS
    importlib.import_module(f'{library}.utils').register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope(library):
        return registry.build(cfg)
