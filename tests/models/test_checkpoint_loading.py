"""Published-style checkpoints load strictly, with the expected leftovers reported by group."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_EXTRA, randomize_

from hrnet_mm.models import HRFuseScales, HRNet
from hrnet_mm.models.checkpoint import CheckpointMismatchError, load_state_dict_checked


def imagenet_style_checkpoint(arch='w18_small'):
    """A bare backbone state dict with the official classification head's keys beside it."""
    bb = randomize_(HRNet(arch=arch))
    head = HRFuseScales(arch, layout='official')
    state = dict(bb.state_dict())
    state.update(head.state_dict())
    state['classifier.weight'] = torch.randn(1000, 2048)
    state['classifier.bias'] = torch.randn(1000)
    return bb, state


def test_imagenet_checkpoint_loads_into_backbone_with_head_keys_reported(tmp_path):
    bb, state = imagenet_style_checkpoint()
    path = tmp_path / 'imagenet.pth'
    torch.save(state, path)
    m = HRNet(arch='w18_small', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    m.init_weights()
    for k, v in bb.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    report = load_state_dict_checked(HRNet(arch='w18_small'), state, 'x')
    head = report['skipped: ImageNet classification head']
    assert len(head) == sum(1 for k in state if k.startswith(('incre', 'downsamp', 'final_layer', 'classifier')))
    assert not set(report) & {'missing', 'unexpected', 'shape mismatch'}


def test_full_model_checkpoint_uses_backbone_keys():
    bb = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA)))
    state = {'state_dict': {**{'backbone.' + k: v for k, v in bb.state_dict().items()},
                            'neck.reduction_conv.conv.weight': torch.zeros(1)}, 'meta': {}}
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA))
    report = load_state_dict_checked(m, state, 'full.pth')
    assert report['used prefix'] == ['backbone.']
    assert report['skipped: other parts of a full model'] == ['neck.reduction_conv.conv.weight']
    assert torch.equal(m.stage4[0].fuse_layers[0][1][0].weight, bb.stage4[0].fuse_layers[0][1][0].weight)


def test_imagenet_checkpoint_into_hrnetv1_skips_unbuilt_fusion():
    _, state = imagenet_style_checkpoint()
    report = load_state_dict_checked(HRNet(arch='w18_small', out_indices=(0,)), state, 'x')
    unbuilt = report['skipped: fusion not built for the selected outputs']
    assert unbuilt and all(k.startswith('stage4.0.fuse_layers.') for k in unbuilt)


def test_checkpoint_of_another_width_is_an_error_naming_the_file():
    _, state = imagenet_style_checkpoint('w18_small')
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_checked(HRNet(arch='w18_small_v2'), state, 'hrnetv2_w18_small.pth')
    text = str(info.value)
    assert 'hrnetv2_w18_small.pth' in text and 'shape mismatch' in text and 'another width' in text


def test_checkpoint_of_another_task_is_an_error():
    state = {'state_dict': {'decode_head.conv_seg.weight': torch.zeros(3, 3, 1, 1)}}
    with pytest.raises(CheckpointMismatchError, match='missing'):
        load_state_dict_checked(HRNet(extra=copy.deepcopy(TINY_EXTRA)), state, 'seg.pth')


def test_corrupt_file_is_one_clear_error(tmp_path):
    path = tmp_path / 'broken.pth'
    path.write_bytes(b'<html><body>404 Not Found</body></html>')
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA), init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointMismatchError, match='cannot read checkpoint .*broken.pth'):
        m.init_weights()
