"""The HRNetV2 and HRNetV2p necks and the classification head: shapes, keys, options and errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from hrnet_mm.models import HRFuseScales, HRNet, HRNetV2Neck, HRNetV2pNeck

CHANNELS = [8, 16, 32, 64]


def feats(h=24, w=40, channels=CHANNELS):
    out = []
    for c in channels:
        out.append(torch.randn(2, c, h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return tuple(out)


def test_hrnetv2_concat_has_15c_channels_at_the_highest_resolution():
    neck = HRNetV2Neck('w18')
    assert neck.out_channels == 18 * 15 and neck.mix is None
    (out,) = neck(feats(channels=[18, 36, 72, 144]))
    assert out.shape == (2, 270, 24, 40)


def test_hrnetv2_mix_and_odd_sizes():
    neck = HRNetV2Neck(CHANNELS, out_channels=12).eval()
    (out,) = neck(feats(25, 37))
    assert out.shape == (2, 12, 25, 37)
    assert isinstance(neck.mix.bn, nn.BatchNorm2d) and neck.mix.conv.bias is None
    assert HRNetV2Neck(CHANNELS, out_channels=12, bias=True).mix.conv.bias is not None


def test_hrnetv2p_pyramid_shapes_and_hrfpn_keys():
    neck = HRNetV2pNeck(CHANNELS, out_channels=16, num_outs=5)
    outs = neck(feats(32, 48))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 32 // 2 ** i, 48 // 2 ** i) for i in range(5)]
    keys = set(neck.state_dict())
    assert keys == {'reduction_conv.conv.weight', 'reduction_conv.conv.bias'} | {
        f'fpn_convs.{i}.conv.{p}' for i in range(5) for p in ('weight', 'bias')}


def test_hrnetv2p_applies_norm_cfg_unlike_hrfpn():
    neck = HRNetV2pNeck(CHANNELS, out_channels=16, num_outs=3, norm_cfg=dict(type='BN'))
    norms = [m for m in neck.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 4  # reduction + 3 levels
    assert neck.reduction_conv.conv.bias is None
    neck.train()
    outs = neck(feats(32, 48))
    for o in outs:  # batch-normalised outputs: per-channel mean ~0 in train mode
        assert o.mean((0, 2, 3)).abs().max() < 1e-4


def test_hrnetv2p_fcos_stride():
    outs = HRNetV2pNeck(CHANNELS, out_channels=8, num_outs=2, stride=2)(feats(32, 48))
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 24), (8, 12)]


@pytest.mark.parametrize('neck', [HRNetV2Neck(CHANNELS), HRNetV2pNeck(CHANNELS, out_channels=8),
                                  HRFuseScales(CHANNELS)])
def test_channel_mismatch_is_a_clear_error(neck):
    with pytest.raises(ValueError, match=r'input 2 has shape \(2, 30, 6, 10\) but in_channels\[2\]=32'):
        neck(feats(channels=[8, 16, 30, 64]))
    with pytest.raises(ValueError, match='expects 4 branches .* got 1 input'):
        neck(feats(channels=[8]))


def test_neck_fed_by_a_single_output_backbone_says_so():
    bb = HRNet(arch='w18_small', out_indices=(0,)).eval()
    with pytest.raises(ValueError, match='does the backbone return all branches'):
        HRNetV2pNeck('w18_small', out_channels=8)(bb(torch.randn(1, 3, 64, 64)))


def test_preset_names_for_in_channels():
    assert HRNetV2pNeck('w32', out_channels=8).in_channels == (32, 64, 128, 256)
    with pytest.raises(ValueError, match="unknown HRNet arch 'w33'"):
        HRNetV2Neck('w33')


@pytest.mark.parametrize('layout,prefixes', [
    ('mmpretrain', {'increase_layers', 'downsample_layers', 'final_layer'}),
    ('official', {'incre_modules', 'downsamp_modules', 'final_layer'})])
def test_classification_head_layouts(layout, prefixes):
    head = HRFuseScales(CHANNELS, layout=layout).eval()
    assert {k.split('.')[0] for k in head.state_dict()} == prefixes
    (out,) = head(feats(32, 32))
    assert out.shape == (2, 2048, 4, 4)
    with pytest.raises(ValueError, match='layout must be one of'):
        HRFuseScales(CHANNELS, layout='timm')
