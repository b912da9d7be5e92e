"""Report on the installed hrnet_mm stack: ``python -m hrnet_mm.cli.env`` (or ``hrnet-mm env``).

Prints the version of every stack component, whether mmcv's compiled ops load, whether CUDA is
available, and whether each of the four task libraries registers its modules (and can build hrnet_mm's
backbone under its own default scope). Exits with status 1 when something required is missing.
"""
from __future__ import annotations

import importlib
import platform
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional

# (distribution name, import name, required)
COMPONENTS = [
    ('torch', 'torch', True),
    ('torchvision', 'torchvision', True),
    ('numpy', 'numpy', True),
    ('mmengine', 'mmengine', True),
    ('mmcv', 'mmcv', True),
    ('mmdet', 'mmdet', True),
    ('mmsegmentation', 'mmseg', True),
    ('mmpose', 'mmpose', True),
    ('mmpretrain', 'mmpretrain', True),
    ('openmim', 'mim', True),
    ('timm', 'timm', False),
    ('onnxruntime', 'onnxruntime', False),
    ('hrnet_mm', 'hrnet_mm', True),
]

TASK_LIBRARIES = ['mmdet', 'mmseg', 'mmpose', 'mmpretrain']


@dataclass
class Check:
    """One line of the report."""

    name: str
    ok: bool
    detail: str
    required: bool = True


def _version_of(dist: str, import_name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    importlib.import_module(import_name)
    try:
        return version(dist)
    except PackageNotFoundError:
        return 'importable, no distribution metadata'


def _try(name: str, fn: Callable[[], str], required: bool = True) -> Check:
    try:
        return Check(name, True, fn(), required)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
        return Check(name, False, f'{type(exc).__name__}: {exc}'.splitlines()[0][:160], required)


def _mmcv_ops() -> str:
    import torch
    from mmcv.ops import RoIAlign, nms  # noqa: F401
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, 0.5)
    if keep.tolist() != [0, 2]:
        raise RuntimeError(f'nms returned {keep.tolist()}, expected [0, 2]')
    return 'compiled (nms, RoIAlign load and run)'


def _cuda() -> str:
    import torch
    if torch.cuda.is_available():
        return f'available: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}'
    return 'not available (CPU only)'


def _task_registry(lib: str) -> Callable[[], str]:
    def check() -> str:
        utils = importlib.import_module(f'{lib}.utils')
        utils.register_all_modules(init_default_scope=False)
        registry = importlib.import_module(f'{lib}.registry').MODELS
        if registry.get('HRNet') is None:
            raise RuntimeError(f'{lib}.registry.MODELS has no HRNet after register_all_modules()')
        count = len(registry.module_dict)
        built = _build_in_scope(lib)
        return f'{count} models registered; {built}'
    return check


def _build_in_scope(lib: str) -> str:
    """Builds hrnet_mm's backbone through ``lib``'s registry under ``lib``'s default scope."""
    try:
        from hrnet_mm.registry import build_in_scope
    except ImportError:
        return 'hrnet_mm models not available yet'
    model = build_in_scope(lib, dict(type='hrnet_mm.HRNet', arch='w18_small'))
    cls = getattr(model, 'plain', type(model))  # the architecture's class, not the CPU kernels' subclass
    kernels = ' with the CPU training kernels' if cls is not type(model) else ''
    return f"type='hrnet_mm.HRNet' builds {cls.__module__}.{cls.__name__}{kernels}"


def collect() -> List[Check]:
    """Runs every check; never raises."""
    checks = [Check('python', sys.version_info[:2] == (3, 11), platform.python_version())]
    for dist, mod, required in COMPONENTS:
        checks.append(_try(dist, lambda dist=dist, mod=mod: _version_of(dist, mod), required))
    checks.append(_try('mmcv ops', _mmcv_ops))
    checks.append(_try('cuda', _cuda, required=False))
    for lib in TASK_LIBRARIES:
        checks.append(_try(f'{lib} registry', _task_registry(lib)))
    return checks


def main(argv: Optional[List[str]] = None) -> int:
    """Prints the report; returns 1 when a required component is missing or broken."""
    checks = collect()
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = 'ok' if c.ok else ('MISSING' if c.required else 'absent')
        print(f'{c.name:<{width}}  {mark:<7}  {c.detail}')
    failed = [c.name for c in checks if c.required and not c.ok]
    if failed:
        print(f'\nhrnet_mm env: required component(s) missing or broken: {", ".join(failed)}. '
              'Run `make install` (logs in .venv/install-logs/).', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
