"""Behaviour of the hrnet_mm.HRNet backbone: outputs, sizes, presets, training switches and bad input."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
from conftest import TINY_EXTRA, randomize_, rel_err

from hrnet_mm.models import PRESETS, HRNet, StageSpec
from hrnet_mm.models.blocks import _ResidualBlock


def expected_sizes(h, w, n=4):
    h, w = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
    sizes = []
    for _ in range(n):
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return sizes


def test_presets_have_documented_channels_and_strides():
    widths = {'w18_small': 16, 'w18_small_v2': 18, 'w18': 18, 'w30': 30, 'w32': 32, 'w40': 40, 'w44': 44,
              'w48': 48, 'w64': 64}
    assert set(PRESETS) == set(widths)
    for name, c in widths.items():
        m = HRNet(arch=name)
        assert m.out_channels == (c, 2 * c, 4 * c, 8 * c), name
        assert m.out_strides == (4, 8, 16, 32)


@pytest.mark.parametrize('size', [(32, 32), (64, 96), (97, 130), (33, 47), (160, 64)])
def test_any_size_from_32px_works_with_documented_output_sizes(size):
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA)).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, *size))
    assert [tuple(o.shape[-2:]) for o in outs] == expected_sizes(*size)
    assert [o.shape[1] for o in outs] == list(m.out_channels)


def test_473_square_input_that_crashes_the_peers():
    m = HRNet(arch='w18_small').eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 473, 473))
    assert [tuple(o.shape[-2:]) for o in outs] == expected_sizes(473, 473)


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_every_preset_runs_an_odd_size(preset):
    m = HRNet(arch=preset).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 67, 45))
    assert [tuple(o.shape[-2:]) for o in outs] == expected_sizes(67, 45)
    assert all(torch.isfinite(o).all() for o in outs)


def test_divisible_sizes_give_exact_strides():
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA)).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 128, 96))
    assert [tuple(o.shape[-2:]) for o in outs] == [(128 // s, 96 // s) for s in m.out_strides]


def test_hrnetv1_returns_the_high_resolution_branch_and_builds_only_its_fusion():
    full = HRNet(extra=copy.deepcopy(TINY_EXTRA))
    v1 = HRNet(extra=copy.deepcopy(TINY_EXTRA), out_indices=(0,))
    assert v1.out_channels == (8,) and v1.out_strides == (4,)
    assert len(v1.stage4[-1].fuse_layers) == 1 and len(full.stage4[-1].fuse_layers) == 4
    randomize_(full)
    missing, unexpected = v1.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all('stage4.1.fuse_layers.' in k for k in unexpected)
    full.eval(), v1.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (a,), b = v1(x), full(x)
    assert torch.equal(a, b[0])


def test_out_indices_selects_branches():
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA), out_indices=(1, 3)).eval()
    assert m.out_channels == (16, 64) and m.out_strides == (8, 32)
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 64]


def test_mmdet_multiscale_output_flag():
    assert HRNet(extra=copy.deepcopy(TINY_EXTRA), multiscale_output=False).out_indices == (0,)
    assert HRNet(extra=copy.deepcopy(TINY_EXTRA), multiscale_output=True).out_indices == (0, 1, 2, 3)


def test_gradients_reach_every_parameter():
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA)).train()
    outs = m(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def test_frozen_stages_have_no_gradients_and_eval_norms():
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA), frozen_stages=2)
    m.train()
    frozen_prefixes = ('conv1', 'bn1', 'conv2', 'bn2', 'layer1', 'transition1', 'stage2', 'transition2')
    for name, p in m.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes)), name
    for name, mod in m.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert mod.training == (not name.startswith(frozen_prefixes)), name
    outs = m(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in outs).backward()
    assert all(p.grad is None for n, p in m.named_parameters() if n.startswith(frozen_prefixes))
    assert m.stage3[0].branches[0][0].conv1.weight.grad is not None


def test_frozen_stem_only():
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA), frozen_stages=0).train()
    assert not m.conv1.weight.requires_grad and not m.norm1.training
    assert m.layer1[0].conv1.weight.requires_grad


def test_norm_eval_holds_after_train():
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA), norm_eval=True)
    m.train()
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    assert m.training
    before = m.norm1.running_mean.clone()
    m(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, m.norm1.running_mean)


def test_with_cp_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    a = HRNet(extra=copy.deepcopy(TINY_EXTRA), cpu_kernels=False)
    b = HRNet(extra=copy.deepcopy(TINY_EXTRA), with_cp=True, cpu_kernels=False)
    randomize_(a)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    outs_a, outs_b = a(xa), b(xb)
    for u, v in zip(outs_a, outs_b):
        assert rel_err(v, u) < 1e-6
    sum(o.square().mean() for o in outs_a).backward()
    sum(o.square().mean() for o in outs_b).backward()
    assert rel_err(xb.grad, xa.grad) < 1e-5
    ga, gb = dict(a.named_parameters()), dict(b.named_parameters())
    for n in ga:
        assert rel_err(gb[n].grad, ga[n].grad) < 1e-5, n


def test_with_cp_reaches_layer1_and_fusion():
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA), with_cp=True)
    assert m.layer1[0].with_cp
    assert all(mod.with_cp for mod in m.modules() if isinstance(mod, _ResidualBlock))
    assert m.stage4[0].with_cp


def test_zero_init_residual_makes_each_block_start_as_identity():
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA), zero_init_residual=True)
    blocks = [mod for mod in m.modules() if isinstance(mod, _ResidualBlock)]
    assert blocks and all(torch.count_nonzero(b.last_norm.weight) == 0 for b in blocks)
    m.init_weights()  # the mmengine lifecycle call keeps it
    assert all(torch.count_nonzero(b.last_norm.weight) == 0 for b in blocks)
    plain = HRNet(extra=copy.deepcopy(TINY_EXTRA))
    assert all(torch.count_nonzero(b.last_norm.weight) > 0
               for b in plain.modules() if isinstance(b, _ResidualBlock))


def test_norm_cfg_and_conv_cfg_reach_every_layer():
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA), norm_cfg=dict(type='GN', num_groups=4),
              conv_cfg=dict(type='Conv2d'))
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert sum(isinstance(mod, nn.GroupNorm) for mod in m.modules()) > 20
    with torch.no_grad():
        m.eval()(torch.randn(1, 3, 64, 64))


def test_fresh_module_is_initialised():
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA))
    w = m.stage3[0].branches[1][0].conv1.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(w.std().item() - math.sqrt(2 / fan_out)) < 0.3 * math.sqrt(2 / fan_out)
    with torch.no_grad():
        outs = m.eval()(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(o).all() and o.abs().sum() > 0 for o in outs)


def test_custom_stage_specs():
    spec = (StageSpec(1, 'BASIC', (2,), (24,)),
            StageSpec(2, 'BOTTLENECK', (1, 2), (8, 12)),
            StageSpec(1, 'BASIC', (1, 1, 3), (10, 20, 30)))
    m = HRNet(arch=spec).eval()
    assert m.out_channels == (10, 20, 30) and m.out_strides == (4, 8, 16)
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [10, 20, 30]


def test_two_new_branches_in_one_transition():
    spec = (StageSpec(1, 'BOTTLENECK', (1,), (8,)), StageSpec(1, 'BASIC', (1, 1, 1), (8, 16, 32)))
    m = HRNet(arch=spec).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(8, 16, 16), (16, 8, 8), (32, 4, 4)]


@pytest.mark.parametrize('kwargs,message', [
    (dict(arch='w19'), "unknown HRNet arch 'w19'; valid presets: w18_small"),
    (dict(arch='w18', extra=TINY_EXTRA), 'not both'),
    (dict(), 'arch is required'),
    (dict(extra=dict(TINY_EXTRA, stage3=dict(TINY_EXTRA['stage3'], num_blocks=(1, 1)))),
     'extra.stage3: num_branches=3 but num_blocks has 2 entries'),
    (dict(extra=dict(TINY_EXTRA, stage2=dict(TINY_EXTRA['stage2'], block='RESNEXT'))),
     "stage2.block: unknown block 'RESNEXT'"),
    (dict(extra=dict(TINY_EXTRA, stage4=dict(TINY_EXTRA['stage4'], num_channels=(8, 16, 0, 64)))),
     'stage4.num_channels: every entry must be a positive int'),
    (dict(extra=dict(TINY_EXTRA, stage2=dict(TINY_EXTRA['stage2'], num_branches=3))),
     'extra.stage2: num_branches=3 but num_channels has 2 entries'),
    (dict(extra=dict(TINY_EXTRA, stage3=dict(TINY_EXTRA['stage3'], num_modules=0))),
     'stage3.num_modules must be a positive int'),
    (dict(arch='w18', out_indices=(0, 4)), 'out_indices=(0, 4)'),
    (dict(arch='w18', frozen_stages=5), 'frozen_stages must be an int in [-1, 4]'),
    (dict(arch='w18', upsample_cfg=dict(mode='area')), "unknown mode 'area'"),
    (dict(arch='w18', multiscale_output=False, out_indices=(0, 1)), 'multiscale_output=False'),
])
def test_invalid_specs_raise_a_value_error_naming_the_problem(kwargs, message):
    with pytest.raises(ValueError) as info:
        HRNet(**copy.deepcopy(kwargs))
    assert message in str(info.value)


def test_channels_last_weights_compute_the_same_function():
    """``model.to(memory_format=torch.channels_last)``: NHWC weights, same keys, same outputs and gradients (float64,
    where the two memory layouts must agree to rounding) and the layout survives loading a contiguous checkpoint."""
    ref = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).double()
    cl = HRNet(extra=copy.deepcopy(TINY_EXTRA)).double().to(memory_format=torch.channels_last)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in cl.parameters() if p.dim() == 4)
    cl.load_state_dict(ref.state_dict())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in cl.parameters() if p.dim() == 4)
    x = torch.randn(2, 3, 97, 130, dtype=torch.float64)
    for mode in (False, True):
        ref.train(mode), cl.train(mode)
        outs_ref, outs_cl = ref(x), cl(x)
        for a, b in zip(outs_cl, outs_ref):
            assert a.is_contiguous(memory_format=torch.channels_last)
            assert rel_err(a, b) < 1e-10
        sum(o.square().mean() for o in outs_ref).backward()
        sum(o.square().mean() for o in outs_cl).backward()
        for (name, p), q in zip(ref.named_parameters(), cl.parameters()):
            assert rel_err(q.grad, p.grad) < 1e-9, name
        ref.zero_grad(), cl.zero_grad()
