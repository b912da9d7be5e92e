"""Every hrnet_mm module builds as `hrnet_mm.<Name>` under each task library's default scope, and the built
object is hrnet_mm's class, not the task library's same-named copy."""
from __future__ import annotations

import pytest

import hrnet_mm
from hrnet_mm.registry import MODELS, build_in_scope

LIBRARIES = ['mmdet', 'mmseg', 'mmpose', 'mmpretrain']
CONFIGS = {
    'HRNet': dict(type='hrnet_mm.HRNet', arch='w18_small'),
    'HRNetV2Neck': dict(type='hrnet_mm.HRNetV2Neck', in_channels='w18', out_channels=32),
    'HRNetV2pNeck': dict(type='hrnet_mm.HRNetV2pNeck', in_channels='w18', out_channels=32),
    'HRFuseScales': dict(type='hrnet_mm.HRFuseScales', in_channels='w18'),
}


def test_registry_scope():
    assert MODELS.scope == 'hrnet_mm'
    assert set(CONFIGS) <= set(MODELS.module_dict)


@pytest.mark.parametrize('library', LIBRARIES)
@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_scoped_type_builds_hrnet_mm_class(library, name):
    built = build_in_scope(library, dict(CONFIGS[name]))
    assert isinstance(built, getattr(hrnet_mm, name))  # the CPU kernels subclass HRNet


@pytest.mark.parametrize('library', LIBRARIES)
def test_unscoped_type_is_the_task_library_copy(library):
    """Why configs must write the scope: `type='HRNet'` resolves to the downstream copy."""
    extra = {f'stage{k + 1}': s.to_extra() for k, s in enumerate(hrnet_mm.models.get_preset('w18_small'))}
    kwargs = dict(arch='w18') if library == 'mmpretrain' else dict(extra=extra)
    built = build_in_scope(library, dict(type='HRNet', **kwargs))
    assert type(built) is not hrnet_mm.HRNet
    assert type(built).__module__.startswith(library)


def test_mmpose_config_moved_without_output_choice_fails_loudly():
    extra = {f'stage{k + 1}': s.to_extra() for k, s in enumerate(hrnet_mm.models.get_preset('w18_small'))}
    with pytest.raises(ValueError, match='multiscale_output=False'):
        build_in_scope('mmpose', dict(type='hrnet_mm.HRNet', extra=extra))
    extra['stage4']['multiscale_output'] = False
    assert build_in_scope('mmpose', dict(type='hrnet_mm.HRNet', extra=extra)).out_indices == (0,)
