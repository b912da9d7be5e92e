"""HRNet architecture specifications: named presets and validation of custom specs.

A spec is a tuple of :class:`StageSpec`, one per stage. Stage 1 is the single-branch residual layer
(``layer1``); every later stage is a sequence of HR modules with one branch per resolution, and adds
branches to the previous one. The presets are those of Wang et al., "Deep High-Resolution Representation
Learning for Visual Recognition", TPAMI 2020, as published in the official repositories.

The peers' ``extra=dict(stage1=dict(num_modules=..., num_branches=..., block=..., num_blocks=...,
num_channels=...), ...)`` format is accepted by :func:`parse_extra`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Sequence, Tuple, Union

BLOCK_NAMES = ('BASIC', 'BOTTLENECK')


@dataclass(frozen=True)
class StageSpec:
    """One stage of an HRNet.

    Attributes:
        num_modules: Number of HR modules (stage 1 is a plain residual layer and must have 1).
        block: ``'BASIC'`` or ``'BOTTLENECK'``.
        num_blocks: Blocks per branch, one entry per branch.
        num_channels: Width per branch (before the block expansion), one entry per branch.
    """

    num_modules: int
    block: str
    num_blocks: Tuple[int, ...]
    num_channels: Tuple[int, ...]

    @property
    def num_branches(self) -> int:
        return len(self.num_channels)

    def to_extra(self) -> Dict[str, Any]:
        """The stage in the peers' ``extra`` vocabulary."""
        return dict(num_modules=self.num_modules, num_branches=self.num_branches, block=self.block,
                    num_blocks=self.num_blocks, num_channels=self.num_channels)


ArchSpec = Tuple[StageSpec, ...]


def standard(width: int) -> ArchSpec:
    """The standard HRNet-W<width>: 1/1/4/3 modules, 4 blocks per branch, widths C, 2C, 4C, 8C."""
    c = width
    return (StageSpec(1, 'BOTTLENECK', (4,), (64,)),
            StageSpec(1, 'BASIC', (4, 4), (c, 2 * c)),
            StageSpec(4, 'BASIC', (4, 4, 4), (c, 2 * c, 4 * c)),
            StageSpec(3, 'BASIC', (4, 4, 4, 4), (c, 2 * c, 4 * c, 8 * c)))


PRESETS: Dict[str, ArchSpec] = {
    # HRNet-W18-Small-v1 (official cls_hrnet_w18_small_v1 / timm hrnet_w18_small)
    'w18_small': (StageSpec(1, 'BOTTLENECK', (1,), (32,)),
                  StageSpec(1, 'BASIC', (2, 2), (16, 32)),
                  StageSpec(1, 'BASIC', (2, 2, 2), (16, 32, 64)),
                  StageSpec(1, 'BASIC', (2, 2, 2, 2), (16, 32, 64, 128))),
    # HRNet-W18-Small-v2 (mmseg "hr18s", timm hrnet_w18_small_v2)
    'w18_small_v2': (StageSpec(1, 'BOTTLENECK', (2,), (64,)),
                     StageSpec(1, 'BASIC', (2, 2), (18, 36)),
                     StageSpec(3, 'BASIC', (2, 2, 2), (18, 36, 72)),
                     StageSpec(2, 'BASIC', (2, 2, 2, 2), (18, 36, 72, 144))),
}
PRESETS.update({f'w{w}': standard(w) for w in (18, 30, 32, 40, 44, 48, 64)})


def _as_tuple(value: Any, stage: str, field: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ValueError(f'HRNet {stage}.{field} must be a sequence of ints, got {value!r}') from None


def validate(stages: Sequence[StageSpec]) -> ArchSpec:
    """Checks a spec and returns it as a tuple; raises ``ValueError`` naming the stage and field."""
    if len(stages) < 1:
        raise ValueError('HRNet needs at least one stage')
    prev_branches = 0
    for k, s in enumerate(stages, start=1):
        name = f'stage{k}'
        if s.block not in BLOCK_NAMES:
            raise ValueError(f'HRNet {name}.block: unknown block {s.block!r}; expected one of {BLOCK_NAMES}')
        if len(s.num_blocks) != len(s.num_channels):
            raise ValueError(f'HRNet {name}: num_blocks has {len(s.num_blocks)} entries but num_channels has '
                             f'{len(s.num_channels)}; both need one entry per branch')
        if len(s.num_channels) == 0:
            raise ValueError(f'HRNet {name}.num_channels: needs at least one branch')
        for field in ('num_channels', 'num_blocks'):
            for v in getattr(s, field):
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise ValueError(f'HRNet {name}.{field}: every entry must be a positive int, '
                                     f'got {getattr(s, field)!r}')
        if not isinstance(s.num_modules, int) or s.num_modules <= 0:
            raise ValueError(f'HRNet {name}.num_modules must be a positive int, got {s.num_modules!r}')
        if k == 1:
            if s.num_branches != 1:
                raise ValueError(f'HRNet stage1 has one branch (the residual layer1), got {s.num_branches}')
            if s.num_modules != 1:
                raise ValueError(f'HRNet stage1.num_modules must be 1 (stage 1 is one residual layer), '
                                 f'got {s.num_modules}')
        elif s.num_branches < prev_branches:
            raise ValueError(f'HRNet {name} has {s.num_branches} branches, fewer than the '
                             f'{prev_branches} of stage{k - 1}; a stage keeps its resolutions and may add new ones')
        prev_branches = s.num_branches
    return tuple(stages)


def get_preset(name: str) -> ArchSpec:
    """The spec of a preset; unknown names raise ``ValueError`` listing the valid ones."""
    key = name.lower()
    if key.startswith('hrnet_'):
        key = key[len('hrnet_'):]
    if key not in PRESETS:
        raise ValueError(f'unknown HRNet arch {name!r}; valid presets: {", ".join(PRESETS)}')
    return PRESETS[key]


def parse_extra(extra: Mapping[str, Any]) -> ArchSpec:
    """Converts the peers' ``extra=dict(stage1=..., stage2=..., ...)`` into a spec.

    Keys other than ``stageN`` (mmpose's ``upsample``, ...) are ignored here; ``num_branches``, when
    given, must agree with the per-branch lists, and ``fuse_method`` may only be ``'SUM'``.
    """
    names = sorted((k for k in extra if k.startswith('stage') and k[5:].isdigit()), key=lambda k: int(k[5:]))
    if not names:
        raise ValueError('HRNet extra: no stage1..stageN entries found')
    if names != [f'stage{i}' for i in range(1, len(names) + 1)]:
        raise ValueError(f'HRNet extra: stages must be numbered stage1..stageN without gaps, got {names}')
    stages = []
    for name in names:
        cfg = extra[name]
        for field in ('block', 'num_blocks', 'num_channels'):
            if field not in cfg:
                raise ValueError(f'HRNet extra.{name}: missing field {field!r}')
        spec = StageSpec(num_modules=cfg.get('num_modules', 1), block=str(cfg['block']).upper(),
                         num_blocks=_as_tuple(cfg['num_blocks'], name, 'num_blocks'),
                         num_channels=_as_tuple(cfg['num_channels'], name, 'num_channels'))
        if 'num_branches' in cfg and cfg['num_branches'] != spec.num_branches:
            raise ValueError(f'HRNet extra.{name}: num_branches={cfg["num_branches"]} but num_channels has '
                             f'{spec.num_branches} entries ({spec.num_channels})')
        if 'num_branches' in cfg and cfg['num_branches'] != len(spec.num_blocks):
            raise ValueError(f'HRNet extra.{name}: num_branches={cfg["num_branches"]} but num_blocks has '
                             f'{len(spec.num_blocks)} entries ({spec.num_blocks})')
        if cfg.get('fuse_method', 'SUM') != 'SUM':
            raise ValueError(f'HRNet extra.{name}.fuse_method: only SUM exists, got {cfg["fuse_method"]!r}')
        stages.append(spec)
    return validate(stages)


def resolve(arch: Union[str, Mapping[str, Any], Iterable[StageSpec], None],
            extra: Union[Mapping[str, Any], None]) -> ArchSpec:
    """Resolves the backbone's ``arch``/``extra`` arguments to one spec (exactly one must be given)."""
    if extra is not None and arch is not None:
        raise ValueError('HRNet: give either arch (a preset name or stage specs) or extra (the peers\' '
                         'stage dict), not both')
    if extra is not None:
        return parse_extra(extra)
    if arch is None:
        raise ValueError(f'HRNet: arch is required (one of {", ".join(PRESETS)}, or a dict of stages)')
    if isinstance(arch, str):
        return get_preset(arch)
    if isinstance(arch, Mapping):
        return parse_extra(arch)
    stages = tuple(arch)
    if not all(isinstance(s, StageSpec) for s in stages):
        raise ValueError(f'HRNet arch: expected a preset name, a dict of stages or StageSpecs, got {arch!r}')
    return validate(stages)
