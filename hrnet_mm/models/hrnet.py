"""The HRNet backbone (Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition",
TPAMI 2020): one implementation for detection, segmentation, pose and classification.

The network keeps a stride-4 stream from the stem to the end, adds a stream at half the resolution in
each new stage, and after every HR module fuses all streams into each other (strided 3x3 convs going
down, 1x1 conv + upsampling going up). It returns the branches selected by ``out_indices``:

* all four (default): the input of the HRNetV2 (:class:`~hrnet_mm.models.necks.HRNetV2Neck`) and
  HRNetV2p (:class:`~hrnet_mm.models.necks.HRNetV2pNeck`) representations and of the classification head;
* ``(0,)``: HRNetV1, the high-resolution stream only (pose). The last HR module then builds only the
  fusion into branch 0, as the official pose code does.

Output sizes: for an input ``(N, C, H, W)``, branch ``i`` has ``out_channels[i]`` channels and spatial size
``(h_i, w_i)`` with ``h_0 = ceil(ceil(H / 2) / 2)`` and ``h_{i+1} = ceil(h_i / 2)`` (each stride-2 3x3 conv
with padding 1 rounds up); likewise for ``w``. Any input of at least 32x32 works, odd sizes included, because
the upsampling in every fusion resizes to the exact size of the target branch. For ``H`` and ``W`` divisible
by 32 this is ``H / 4 / 2**i`` and the result equals the peers' bit for bit.

State-dict keys are those of the official code and every OpenMMLab peer (``conv1``, ``bn1``, ``layer1``,
``transition{k}``, ``stage{k}.{m}.branches``, ``stage{k}.{m}.fuse_layers``), so published checkpoints load
with ``strict=True``.

The backbone compiles with ``torch.jit.script`` (up to :data:`MAX_SCRIPTED_STAGES` stages) and with
``torch.compile(fullgraph=True)``. Branches that pass through a transition unchanged, and the path of a branch
into itself in a fusion, are ``nn.Identity`` (no parameters, so the keys are those of the ``None`` entries of the
official code); containers are iterated, never indexed by a computed value. A scripted HRNet returns a list
of maps instead of a tuple (TorchScript has no tuples of data-dependent length).
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from ..registry import MODELS
from .arch import ArchSpec, StageSpec, resolve
from .blocks import BLOCKS, NamedNorms, _ResidualBlock, conv_norm, make_res_layer

UPSAMPLE_MODES = ('nearest', 'bilinear', 'bicubic')
MAX_SCRIPTED_STAGES = 6  # stages written out in HRNet._scripted_stages


_REMOVED = {
    'channels_last': 'the CPU training kernels choose channels_last per step; for channels_last weights call '
                     'model.to(memory_format=torch.channels_last)',
    'compile': "compile the model with the runner's `compile=True` or torch.compile(model)",
    'winograd': 'the CPU training kernels are one switch: cpu_kernels=True|False',
    'fused_norm': 'the CPU training kernels are one switch: cpu_kernels=True|False',
}


def _refuse_removed(kwargs: Mapping[str, Any]) -> None:
    """Raises one TypeError naming each unknown argument and, for the speed switches that ``cpu_kernels``
    replaced, what to write instead."""
    hints = [f'{k}: {_REMOVED[k]}' for k in kwargs if k in _REMOVED]
    raise TypeError(f'HRNet got unknown arguments {sorted(kwargs)}' + ('; ' + '; '.join(hints) if hints else ''))


class HRModule(nn.Module):
    """One high-resolution module: parallel branches of residual blocks, then multi-resolution fusion.

    Args:
        block: Block class of the branches.
        num_blocks: Blocks per branch.
        in_channels: Input channels per branch.
        num_channels: Block width per branch (outputs ``num_channels[i] * block.expansion``).
        num_outputs: Number of fused outputs (branches ``0..num_outputs-1``); fewer than the branches
            only in the last module of an HRNetV1.
        upsample_cfg: ``dict(mode=..., align_corners=...)`` of the upward fusion.
        with_cp: Gradient checkpointing of the blocks and of each fusion.
        conv_cfg: mmcv conv config.
        norm_cfg: mmcv norm config.
    """

    def __init__(self, block: type, num_blocks: Sequence[int], in_channels: Sequence[int],
                 num_channels: Sequence[int], num_outputs: int, upsample_cfg: Mapping[str, Any],
                 with_cp: bool = False, conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.num_branches = len(num_channels)
        self.with_cp = with_cp
        self.upsample_mode = upsample_cfg.get('mode', 'nearest')
        self.align_corners = upsample_cfg.get('align_corners', None)
        self.branches = nn.ModuleList(
            make_res_layer(block, in_channels[i], num_channels[i], num_blocks[i], with_cp=with_cp,
                           conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(self.num_branches))
        self.out_channels = [c * block.expansion for c in num_channels]
        self.fuse_layers: Optional[nn.ModuleList] = None
        if self.num_branches > 1:
            self.fuse_layers = nn.ModuleList(
                nn.ModuleList(self._fuse_path(j, i, conv_cfg, norm_cfg) for j in range(self.num_branches))
                for i in range(num_outputs))
        self.relu = nn.ReLU(inplace=True)

    def _fuse_path(self, j: int, i: int, conv_cfg, norm_cfg) -> nn.Module:
        """The path from branch ``j`` into branch ``i`` (``nn.Identity`` for ``i == j``)."""
        c = self.out_channels
        if j > i:  # 1x1 conv + norm; the upsampling happens in forward (exact target size)
            return conv_norm(conv_cfg, norm_cfg, c[j], c[i], 1, 1, relu=False)
        if j == i:
            return nn.Identity()
        steps = []
        for k in range(i - j):  # (i - j) strided 3x3 convs, ReLU on all but the last
            last = k == i - j - 1
            steps.append(conv_norm(conv_cfg, norm_cfg, c[j], c[i] if last else c[j], 3, 2, relu=not last))
        return nn.Sequential(*steps)

    def _fuse(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Output ``i`` is ``relu(sum_j path_ij(x_j))``, summed in branch order as the official code does, so
        results are bit-identical to it; ``path_ii`` is the identity."""
        outs: List[torch.Tensor] = []
        fuse_layers = self.fuse_layers
        assert fuse_layers is not None
        for i, paths in enumerate(fuse_layers):
            y: Optional[torch.Tensor] = None
            for j, path in enumerate(paths):
                z = path(xs[j])
                if j > i:  # upsample to the exact size of the target branch (odd input sizes)
                    z = F.interpolate(z, size=xs[i].shape[-2:], mode=self.upsample_mode,
                                      align_corners=self.align_corners)
                y = z if y is None else y + z
            assert y is not None
            outs.append(self.relu(y))
        return outs

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Maps a list of ``num_branches`` maps ``(N, C_i, H_i, W_i)`` to ``num_outputs`` fused maps."""
        ys: List[torch.Tensor] = []
        for i, branch in enumerate(self.branches):
            ys.append(branch(xs[i]))
        if self.fuse_layers is None:
            return ys
        if not torch.jit.is_scripting() and self.with_cp and self.training and any(y.requires_grad for y in ys):
            return cp.checkpoint(self._fuse, ys, use_reentrant=False)
        return self._fuse(ys)


class Stage(nn.Sequential):
    """The HR modules of one stage, applied in order to the list of branch maps. Keys are those of the plain
    ``nn.Sequential`` of the official code; the class only gives TorchScript the list-to-list signature."""

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Maps the branch maps through every HR module of the stage."""
        for module in self:
            xs = module(xs)
        return xs


class Transition(nn.ModuleList):
    """The transition into a stage: entry ``i`` maps the previous stage's branch ``i`` (``nn.Identity`` when
    the width is kept) or, for a new branch, the lowest-resolution one. Keys are those of the plain
    ``nn.ModuleList`` of the official code."""

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Maps the previous stage's maps to one map per branch of the next stage."""
        last = len(xs) - 1
        ys: List[torch.Tensor] = []
        for i, layer in enumerate(self):
            ys.append(layer(xs[min(i, last)]))
        return ys


@MODELS.register_module()
class HRNet(BaseModule, NamedNorms):
    """HRNet backbone, registered as ``hrnet_mm.HRNet``: maps ``(N, in_channels, H, W)`` to the branches in
    ``out_indices`` (module docstring).

    Args:
        arch: A preset (``w18_small``, ``w18_small_v2``, ``w18`` .. ``w64``), a peers' ``extra`` dict or StageSpecs.
        extra: The peers' stage dict (``stage1`` .. ``stageN``) as written in mmdet/mmseg/mmpose configs.
        out_indices: Branches to return; default all (HRNetV2/V2p input), ``(0,)`` is HRNetV1 (pose).
        multiscale_output: mmdet's switch; ``False`` means ``out_indices=(0,)``.
        upsample_cfg: The upward fusion's mode: ``nearest`` (default) or mmseg's ``bilinear``.
        in_channels: Input image channels.
        stem_channels: Width of the two stem convolutions (64 in every published model).
        conv_cfg: mmcv conv config for every conv.
        norm_cfg: mmcv norm config for every norm layer.
        norm_eval: Keep every BN layer in eval mode (frozen statistics) during training.
        frozen_stages: Freeze the stem (0) and stages 1..k with their transitions (k); -1 freezes nothing.
        with_cp: Gradient checkpointing in every residual block (layer1 included) and every fusion.
        zero_init_residual: Zero the last norm of every residual block, so each starts as the identity.
        cpu_kernels: Train on the CPU with hrnet_mm's kernels (:func:`hrnet_mm.ops.convert_cpu_kernels`).
        pretrained: Deprecated alias of ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: mmengine init config; a new module is initialised like the peers' (Kaiming normal, fan_out).

    Attributes:
        arch_spec: The resolved stages.
        out_channels: Channels of each returned map.
        out_strides: Stride of each returned map relative to the input (4, 8, 16, 32 for the four branches).
    """

    # Python-side properties (mmengine's is_init included) that TorchScript need not, and cannot, compile.
    __jit_unused_properties__ = ['norm1', 'norm2', 'num_stages', 'is_init']

    def __init__(self,
                 arch: Union[str, Mapping[str, Any], Sequence[StageSpec], None] = None,
                 extra: Optional[Mapping[str, Any]] = None,
                 out_indices: Optional[Sequence[int]] = None,
                 multiscale_output: Optional[bool] = None,
                 upsample_cfg: Optional[Mapping[str, Any]] = None,
                 in_channels: int = 3,
                 stem_channels: int = 64,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None,
                 norm_eval: bool = False,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 zero_init_residual: bool = False,
                 cpu_kernels: bool = True,
                 pretrained: Optional[str] = None,
                 init_cfg: Union[dict, List[dict], None] = None,
                 **removed: Any) -> None:
        if removed:
            _refuse_removed(removed)
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('HRNet: give init_cfg or pretrained, not both')
            warnings.warn('HRNet: pretrained is deprecated, use init_cfg=dict(type="Pretrained", checkpoint=...)',
                          DeprecationWarning)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.arch_spec: ArchSpec = resolve(arch, extra)
        self.conv_cfg = copy.deepcopy(conv_cfg)
        self.norm_cfg = copy.deepcopy(norm_cfg) if norm_cfg is not None else dict(type='BN')
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.zero_init_residual = zero_init_residual
        if not isinstance(cpu_kernels, bool):
            raise TypeError(f'HRNet cpu_kernels must be True or False, got {cpu_kernels!r}')
        num_stages = len(self.arch_spec)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'HRNet frozen_stages must be an int in [-1, {num_stages}], got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.upsample_cfg = self._resolve_upsample(upsample_cfg, extra)
        self.out_indices = self._resolve_out_indices(out_indices, multiscale_output, extra)

        # stem: two stride-2 3x3 convs
        self.conv1 = build_conv_layer(self.conv_cfg, in_channels, stem_channels, 3, stride=2, padding=1,
                                      bias=False)
        self.norm1_name, norm1 = build_norm_layer(self.norm_cfg, stem_channels, postfix=1)
        self.add_module(self.norm1_name, norm1)
        self.conv2 = build_conv_layer(self.conv_cfg, stem_channels, stem_channels, 3, stride=2, padding=1,
                                      bias=False)
        self.norm2_name, norm2 = build_norm_layer(self.norm_cfg, stem_channels, postfix=2)
        self.add_module(self.norm2_name, norm2)
        self.relu = nn.ReLU(inplace=True)

        # stage 1: a residual layer on the stride-4 stream
        s1 = self.arch_spec[0]
        block = BLOCKS[s1.block]
        self.layer1 = make_res_layer(block, stem_channels, s1.num_channels[0], s1.num_blocks[0],
                                     with_cp=with_cp, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg)
        channels = [s1.num_channels[0] * block.expansion]

        # stages 2..N: transition (new branches from the lowest-resolution one), then HR modules
        num_outputs_last = max(self.out_indices) + 1
        for k in range(1, num_stages):
            spec = self.arch_spec[k]
            block = BLOCKS[spec.block]
            target = [c * block.expansion for c in spec.num_channels]
            self.add_module(f'transition{k}', self._make_transition(channels, target))
            modules = []
            in_ch = target
            for m in range(spec.num_modules):
                last = k == num_stages - 1 and m == spec.num_modules - 1
                module = HRModule(block, spec.num_blocks, in_ch, spec.num_channels,
                                  num_outputs=num_outputs_last if last else spec.num_branches,
                                  upsample_cfg=self.upsample_cfg, with_cp=with_cp,
                                  conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg)
                in_ch = module.out_channels
                modules.append(module)
            self.add_module(f'stage{k + 1}', Stage(*modules))
            channels = in_ch

        self.stage_channels: Tuple[int, ...] = tuple(channels)
        self.out_channels: Tuple[int, ...] = tuple(channels[i] for i in self.out_indices)
        self.out_strides: Tuple[int, ...] = tuple(4 * 2 ** i for i in self.out_indices)

        self._default_init()
        self._freeze_stages()
        if cpu_kernels:
            from ..ops.convert import convert_cpu_kernels  # ops builds on models: imported when used
            convert_cpu_kernels(self)

    # ----------------------------------------------------------------------------------------- config
    @staticmethod
    def _resolve_upsample(upsample_cfg, extra) -> Dict[str, Any]:
        extra_up = extra.get('upsample') if extra is not None else None
        if upsample_cfg is not None and extra_up is not None and dict(upsample_cfg) != dict(extra_up):
            raise ValueError(f'HRNet: upsample_cfg={dict(upsample_cfg)} and extra.upsample={dict(extra_up)} '
                             'disagree; give one')
        cfg = dict(upsample_cfg or extra_up or dict(mode='nearest'))
        mode = cfg.setdefault('mode', 'nearest')
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f'HRNet upsample_cfg.mode: unknown mode {mode!r}; expected one of {UPSAMPLE_MODES}')
        unknown = set(cfg) - {'mode', 'align_corners'}
        if unknown:
            raise ValueError(f'HRNet upsample_cfg: unknown keys {sorted(unknown)} (mode, align_corners)')
        if mode == 'nearest':
            cfg['align_corners'] = None
        else:
            cfg.setdefault('align_corners', False)
        return cfg

    def _resolve_out_indices(self, out_indices, multiscale_output, extra) -> Tuple[int, ...]:
        num_branches = self.arch_spec[-1].num_branches
        last = f'stage{len(self.arch_spec)}'
        stage_ms = extra.get(last, {}).get('multiscale_output') if extra is not None else None
        flags = {v for v in (multiscale_output, stage_ms) if v is not None}
        if len(flags) > 1:
            raise ValueError(f'HRNet: multiscale_output={multiscale_output} and extra.{last}.multiscale_output='
                             f'{stage_ms} disagree')
        flag = flags.pop() if flags else None
        if out_indices is None:
            if flag is None:
                self._check_not_implicit_mmpose(extra, last)
            out_indices = (0,) if flag is False else tuple(range(num_branches))
        else:
            out_indices = tuple(out_indices) if not isinstance(out_indices, int) else (out_indices,)
            if flag is False and out_indices != (0,):
                raise ValueError(f'HRNet: multiscale_output=False selects branch 0 only, but out_indices='
                                 f'{out_indices}')
        if not out_indices or any(not isinstance(i, int) or not 0 <= i < num_branches for i in out_indices):
            raise ValueError(f'HRNet out_indices={out_indices}: each must be a branch index in '
                             f'[0, {num_branches - 1}]')
        if list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f'HRNet out_indices={out_indices} must be increasing and without repeats')
        return out_indices

    @staticmethod
    def _check_not_implicit_mmpose(extra, last) -> None:
        """A config moved from mmpose relies on mmpose's hidden single-output default: refuse to guess."""
        if extra is None:
            return
        try:
            from mmengine.registry import DefaultScope
            scope = DefaultScope.get_current_instance()
        except Exception:  # noqa: BLE001 - no scope machinery: nothing to check
            return
        if scope is not None and scope.scope_name == 'mmpose':
            raise ValueError(
                'hrnet_mm.HRNet built under mmpose with a peer-style `extra` and no output selection: mmpose\'s '
                'HRNet returns only the high-resolution map by default, hrnet_mm returns all branches (a '
                'HeatmapHead would read the stride-32 map). Say which you want: '
                f'extra.{last}.multiscale_output=False (or out_indices=(0,)) for HRNetV1 pose, '
                f'extra.{last}.multiscale_output=True for all branches.')

    # ----------------------------------------------------------------------------------------- layers
    def _make_transition(self, pre: Sequence[int], cur: Sequence[int]) -> Transition:
        layers: List[nn.Module] = []
        for i, c in enumerate(cur):
            if i < len(pre):
                layers.append(nn.Identity() if c == pre[i] else
                              conv_norm(self.conv_cfg, self.norm_cfg, pre[i], c, 3, 1, relu=True))
            else:  # new branch: strided 3x3 convs from the lowest-resolution existing branch
                steps = []
                for j in range(i + 1 - len(pre)):
                    out = c if j == i - len(pre) else pre[-1]
                    steps.append(conv_norm(self.conv_cfg, self.norm_cfg, pre[-1], out, 3, 2, relu=True))
                layers.append(nn.Sequential(*steps))
        return Transition(layers)

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    @property
    def norm2(self) -> nn.Module:
        return getattr(self, self.norm2_name)

    @property
    def num_stages(self) -> int:
        return len(self.arch_spec)

    def __prepare_scriptable__(self) -> 'HRNet':
        """Called by ``torch.jit.script``: checks that the stages fit :meth:`_scripted_stages`."""
        if self.num_stages > MAX_SCRIPTED_STAGES:
            raise RuntimeError(f'torch.jit.script supports HRNets of up to {MAX_SCRIPTED_STAGES} stages, this one '
                               f'has {self.num_stages}')
        return self

    # ----------------------------------------------------------------------------------------- init
    def _default_init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._zero_init_residual()

    def _zero_init_residual(self) -> None:
        if not self.zero_init_residual:
            return
        for m in self.modules():
            if isinstance(m, _ResidualBlock):
                nn.init.zeros_(m.last_norm.weight)

    def init_weights(self) -> None:
        """Applies ``init_cfg``; a ``Pretrained`` entry loads with a key report (see
        :func:`hrnet_mm.models.checkpoint.load_pretrained`) instead of mmengine's silent ``strict=False``.
        Without pretrained weights, ``zero_init_residual`` is applied last."""
        original = self.init_cfg
        cfgs = original if isinstance(original, list) else ([original] if original else [])
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        if not pretrained:
            super().init_weights()
            self._zero_init_residual()
            return
        self.init_cfg = [c for c in cfgs if c.get('type') != 'Pretrained'] or None
        try:
            super().init_weights()
        finally:
            self.init_cfg = original
        from .checkpoint import load_pretrained
        for c in pretrained:
            load_pretrained(self, c['checkpoint'], prefix=c.get('prefix'),
                            map_location=c.get('map_location', 'cpu'))

    # ----------------------------------------------------------------------------------------- forward
    def _scripted_stages(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Stages 2..N under TorchScript, which cannot look modules up by a computed name: each is written out
        and ``hasattr`` (resolved at compile time) keeps those the model has."""
        if hasattr(self, 'stage2'):
            xs = self.stage2(self.transition1(xs))
        if hasattr(self, 'stage3'):
            xs = self.stage3(self.transition2(xs))
        if hasattr(self, 'stage4'):
            xs = self.stage4(self.transition3(xs))
        if hasattr(self, 'stage5'):
            xs = self.stage5(self.transition4(xs))
        if hasattr(self, 'stage6'):
            xs = self.stage6(self.transition5(xs))
        return xs

    def forward(self, x: torch.Tensor):
        """Maps ``(N, in_channels, H, W)`` to a tuple of ``len(out_indices)`` maps (a list when scripted); see
        the module docstring for their sizes."""
        x = self.relu(self._norm1(self.conv1(x)))
        x = self.relu(self._norm2(self.conv2(x)))
        return self.forward_stages(x)

    def forward_stages(self, x: torch.Tensor):
        """Stage 1 and the multi-resolution stages: maps the stem's output ``(N, stem_channels, H/4, W/4)`` to the
        selected branches (the second half of :meth:`forward`)."""
        xs = [self.layer1(x)]
        if torch.jit.is_scripting():
            xs = self._scripted_stages(xs)
            outs: List[torch.Tensor] = []
            for i in self.out_indices:
                outs.append(xs[i])
            return outs
        for k in range(1, self.num_stages):
            # kept branches pass through (or change width); new ones start from the lowest resolution
            xs = getattr(self, f'stage{k + 1}')(getattr(self, f'transition{k}')(xs))
        return tuple(xs[i] for i in self.out_indices)

    # ----------------------------------------------------------------------------------------- train
    def _frozen_modules(self) -> List[nn.Module]:
        mods: List[nn.Module] = []
        if self.frozen_stages >= 0:
            mods += [self.conv1, self.norm1, self.conv2, self.norm2]
        for k in range(1, self.frozen_stages + 1):
            mods.append(self.layer1 if k == 1 else getattr(self, f'stage{k}'))
            if k < self.num_stages:
                mods.append(getattr(self, f'transition{k}'))
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'HRNet':
        """Sets the mode, keeping frozen stages in eval mode and, with ``norm_eval``, every BN layer."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
