"""Randomised specs: any valid small spec builds and gives the documented shapes; invalid ones are refused
with a message that names the stage and field."""
from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hrnet_mm.models import HRNet, StageSpec

widths = st.integers(min_value=1, max_value=12)
blocks = st.sampled_from(['BASIC', 'BOTTLENECK'])


@st.composite
def valid_specs(draw):
    stages = [StageSpec(1, draw(blocks), (draw(st.integers(1, 2)),), (draw(widths),))]
    branches = 1
    for _ in range(draw(st.integers(1, 3))):
        branches = draw(st.integers(branches, 4))
        stages.append(StageSpec(draw(st.integers(1, 2)), draw(blocks),
                                tuple(draw(st.integers(1, 2)) for _ in range(branches)),
                                tuple(draw(widths) for _ in range(branches))))
    return tuple(stages)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=valid_specs(), h=st.integers(32, 80), w=st.integers(32, 80), data=st.data())
def test_valid_specs_build_and_give_documented_shapes(spec, h, w, data):
    n = spec[-1].num_branches
    out_indices = tuple(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))))
    m = HRNet(arch=spec, out_indices=out_indices).eval()
    expansion = 4 if spec[-1].block == 'BOTTLENECK' else 1
    assert m.out_channels == tuple(spec[-1].num_channels[i] * expansion for i in out_indices)
    with torch.no_grad():
        outs = m(torch.randn(1, 3, h, w))
    hh, ww = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
    sizes = []
    for _ in range(n):
        sizes.append((hh, ww))
        hh, ww = math.ceil(hh / 2), math.ceil(ww / 2)
    assert [tuple(o.shape[1:]) for o in outs] == [(m.out_channels[k], *sizes[i])
                                                  for k, i in enumerate(out_indices)]


@st.composite
def invalid_extras(draw):
    """A valid 4-stage extra with one defect; returns (extra, words the error must contain)."""
    extra = {f'stage{k}': dict(num_modules=1, num_branches=k, block='BASIC' if k > 1 else 'BOTTLENECK',
                               num_blocks=(1,) * k, num_channels=tuple(8 * 2 ** i for i in range(k)))
             for k in range(1, 5)}
    k = draw(st.integers(2, 4))
    stage = f'stage{k}'
    defect = draw(st.sampled_from(['blocks_len', 'channels_len', 'block', 'width', 'modules', 'branches']))
    cfg = extra[stage]
    if defect == 'blocks_len':
        cfg['num_blocks'] = (1,) * (k + draw(st.sampled_from([-1, 1])))
        return extra, [stage, 'num_blocks']
    if defect == 'channels_len':
        cfg['num_channels'] = cfg['num_channels'][:-1]
        return extra, [stage, 'num_']
    if defect == 'block':
        cfg['block'] = draw(st.sampled_from(['BASICS', 'bottle', 'RES']))
        return extra, [f'{stage}.block', 'unknown block']
    if defect == 'width':
        widths = list(cfg['num_channels'])
        widths[draw(st.integers(0, k - 1))] = draw(st.integers(-5, 0))
        cfg['num_channels'] = tuple(widths)
        return extra, [f'{stage}.num_channels', 'positive']
    if defect == 'modules':
        cfg['num_modules'] = draw(st.integers(-3, 0))
        return extra, [f'{stage}.num_modules']
    cfg['num_branches'] = k + 1
    return extra, [stage, 'num_branches']


@settings(max_examples=40, deadline=None)
@given(case=invalid_extras())
def test_invalid_specs_are_refused_by_name(case):
    extra, words = case
    try:
        HRNet(extra=extra)
    except ValueError as exc:
        for word in words:
            assert word in str(exc)
    else:
        raise AssertionError(f'accepted an invalid spec: {extra}')
