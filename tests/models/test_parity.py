"""hrnet_mm equals every peer HRNet on the same weights.

Each test builds the peer's module through the peer's own registry, fills every weight and BN statistic
with seeded random values, loads the peer's state dict into the hrnet_mm module with ``strict=True`` (the
keys are the same) and compares outputs on random inputs, in eval mode and in train mode (batch
statistics).

Tolerance: relative error (max abs difference over max abs value) below 1e-5. Both sides run the same
float32 kernels in the same order, so the observed error is 0 or a few float32 ulps; 1e-5 is about 100x
float32's resolution at the outputs' scale, tight enough to catch any wrong path, weight or upsampling mode
(each of those changes outputs by 1e-2 or more).
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_EXTRA, randomize_, rel_err

from hrnet_mm.models import HRFuseScales, HRNet, HRNetV2Neck, HRNetV2pNeck
from hrnet_mm.registry import build_in_scope

TOL = 1e-5


def _peer(library, cfg):
    return build_in_scope(library, cfg)


def _both_modes(fn_ours, fn_peer, modules, x):
    for mode in ('eval', 'train'):
        for m in modules:
            m.train(mode == 'train')
        with torch.no_grad():
            a, b = fn_ours(x), fn_peer(x)
        a = a if isinstance(a, (list, tuple)) else [a]
        b = b if isinstance(b, (list, tuple)) else [b]
        assert len(a) == len(b)
        for i, (u, v) in enumerate(zip(a, b)):
            err = rel_err(u, v)
            assert err < TOL, f'{mode} mode output {i}: relative error {err:.2e}'


@pytest.mark.parametrize('extra', [TINY_EXTRA, 'w18_small'])
def test_mmdet_hrnet_and_hrfpn(extra):
    from hrnet_mm.models.arch import get_preset
    if isinstance(extra, str):
        extra = {f'stage{k + 1}': s.to_extra() for k, s in enumerate(get_preset(extra))}
    peer_bb = _peer('mmdet', dict(type='HRNet', extra=copy.deepcopy(extra), norm_eval=False))
    peer_neck = _peer('mmdet', dict(type='HRFPN', in_channels=list(peer_bb.stage4[-1].in_channels),
                                    out_channels=16, num_outs=5))
    ours_bb = HRNet(extra=copy.deepcopy(extra))
    ours_neck = HRNetV2pNeck(in_channels=ours_bb.out_channels, out_channels=16, num_outs=5)
    randomize_(peer_bb, 1), randomize_(peer_neck, 2)
    ours_bb.load_state_dict(peer_bb.state_dict(), strict=True)
    ours_neck.load_state_dict(peer_neck.state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 128)
    _both_modes(lambda t: ours_neck(ours_bb(t)), lambda t: peer_neck(peer_bb(t)),
                [ours_bb, ours_neck, peer_bb, peer_neck], x)
    # and the backbone alone, all four branches
    _both_modes(ours_bb, peer_bb, [ours_bb, peer_bb], x)


def test_mmdet_hrfpn_stride_and_max_pooling():
    chans = [8, 16, 32, 64]
    peer = _peer('mmdet', dict(type='HRFPN', in_channels=chans, out_channels=8, num_outs=3,
                               pooling_type='MAX', stride=2))
    ours = HRNetV2pNeck(chans, out_channels=8, num_outs=3, pooling_type='MAX', stride=2)
    randomize_(peer, 3)
    ours.load_state_dict(peer.state_dict(), strict=True)
    feats = [torch.randn(1, c, 32 // 2 ** i, 48 // 2 ** i) for i, c in enumerate(chans)]
    _both_modes(lambda f: ours(f), lambda f: peer(f), [ours, peer], feats)


def _mmseg_decode(in_channels):
    total = sum(in_channels)
    return dict(type='FCNHead', in_channels=list(in_channels), in_index=(0, 1, 2, 3), channels=total,
                input_transform='resize_concat', kernel_size=1, num_convs=1, concat_input=False,
                dropout_ratio=-1, num_classes=5, norm_cfg=dict(type='BN'), align_corners=False)


def test_mmseg_hrnet_and_fcn_resize_concat_head():
    extra = copy.deepcopy(TINY_EXTRA)
    peer_bb = _peer('mmseg', dict(type='HRNet', extra=copy.deepcopy(extra)))
    chans = peer_bb.stage4[-1].in_channels
    peer_head = _peer('mmseg', _mmseg_decode(chans))
    total = sum(chans)
    ours_bb = HRNet(extra=extra, upsample_cfg=dict(mode='bilinear', align_corners=False))
    ours_neck = HRNetV2Neck(ours_bb.out_channels, out_channels=total)
    # the decode head left after the neck: no convs, just dropout-free conv_seg
    ours_head = _peer('mmseg', dict(type='FCNHead', in_channels=total, channels=total, num_convs=0,
                                    concat_input=False, kernel_size=1, dropout_ratio=-1, num_classes=5,
                                    align_corners=False))
    randomize_(peer_bb, 4), randomize_(peer_head, 5)
    ours_bb.load_state_dict(peer_bb.state_dict(), strict=True)
    head_state = peer_head.state_dict()
    ours_neck.load_state_dict({k.replace('convs.0.', 'mix.'): v for k, v in head_state.items()
                               if k.startswith('convs.0.')}, strict=True)
    ours_head.load_state_dict({k: v for k, v in head_state.items() if k.startswith('conv_seg.')}, strict=True)
    x = torch.randn(2, 3, 64, 96)
    _both_modes(lambda t: ours_head(ours_neck(ours_bb(t))), lambda t: peer_head(peer_bb(t)),
                [ours_bb, ours_neck, ours_head, peer_bb, peer_head], x)


def test_mmseg_default_differs_only_by_upsampling():
    """hrnet_mm's default (nearest) is not mmseg's; `upsample_cfg=dict(mode='bilinear')` is (shown above)."""
    peer = _peer('mmseg', dict(type='HRNet', extra=copy.deepcopy(TINY_EXTRA)))
    ours = HRNet(extra=copy.deepcopy(TINY_EXTRA))
    randomize_(peer, 6)
    ours.load_state_dict(peer.state_dict(), strict=True)
    peer.eval(), ours.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ours(x)[0], peer(x)[0]) > 1e-3


@pytest.mark.parametrize('multiscale', [False, True])
def test_mmpose_hrnet(multiscale):
    extra = copy.deepcopy(TINY_EXTRA)
    extra['stage4']['multiscale_output'] = multiscale
    peer = _peer('mmpose', dict(type='HRNet', extra=copy.deepcopy(extra)))
    ours = build_in_scope('mmpose', dict(type='hrnet_mm.HRNet', extra=copy.deepcopy(extra)))
    assert isinstance(ours, HRNet)
    assert ours.out_indices == ((0, 1, 2, 3) if multiscale else (0,))
    randomize_(peer, 7)
    ours.load_state_dict(peer.state_dict(), strict=True)  # single output: the same missing fuse layers
    _both_modes(ours, peer, [ours, peer], torch.randn(2, 3, 64, 64))


def test_mmpose_bilinear_upsample_extra():
    extra = copy.deepcopy(TINY_EXTRA)
    extra['stage4']['multiscale_output'] = True
    extra['upsample'] = dict(mode='bilinear', align_corners=False)
    peer = _peer('mmpose', dict(type='HRNet', extra=copy.deepcopy(extra)))
    ours = HRNet(extra=copy.deepcopy(extra))
    randomize_(peer, 8)
    ours.load_state_dict(peer.state_dict(), strict=True)
    _both_modes(ours, peer, [ours, peer], torch.randn(1, 3, 64, 64))


def _mmpretrain_classifier(backbone, neck0):
    return dict(type='ImageClassifier', backbone=backbone,
                neck=[neck0, dict(type='GlobalAveragePooling')],
                head=dict(type='LinearClsHead', in_channels=2048, num_classes=10,
                          loss=dict(type='CrossEntropyLoss')))


def test_mmpretrain_classifier():
    peer = _peer('mmpretrain', _mmpretrain_classifier(
        dict(type='HRNet', arch='w18'), dict(type='HRFuseScales', in_channels=(18, 36, 72, 144))))
    ours = _peer('mmpretrain', _mmpretrain_classifier(
        dict(type='hrnet_mm.HRNet', arch='w18'), dict(type='hrnet_mm.HRFuseScales', in_channels='w18')))
    assert isinstance(ours.backbone, HRNet) and isinstance(ours.neck[0], HRFuseScales)
    randomize_(peer, 9)
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    _both_modes(lambda t: ours(t, mode='tensor'), lambda t: peer(t, mode='tensor'), [ours, peer], x)


timm = pytest.importorskip('timm')


def timm_to_mmpretrain_layout(state):
    """Official/timm ImageNet keys -> an mmpretrain ImageClassifier with the official-layout head."""
    out = {}
    for k, v in state.items():
        if k.startswith(('incre_modules.', 'downsamp_modules.', 'final_layer.')):
            out['neck.0.' + k] = v
        elif k.startswith('classifier.'):
            out['head.fc.' + k[len('classifier.'):]] = v
        else:
            out['backbone.' + k] = v
    return out


@pytest.mark.parametrize('name,arch', [('hrnet_w18_small', 'w18_small'), ('hrnet_w18_small_v2', 'w18_small_v2'),
                                       ('hrnet_w18', 'w18')])
def test_timm_classification_official_layout(name, arch):
    peer = timm.create_model(name, pretrained=False, num_classes=10)
    ours = _peer('mmpretrain', dict(
        type='ImageClassifier', backbone=dict(type='hrnet_mm.HRNet', arch=arch),
        neck=[dict(type='hrnet_mm.HRFuseScales', in_channels=arch, layout='official'),
              dict(type='GlobalAveragePooling')],
        head=dict(type='LinearClsHead', in_channels=2048, num_classes=10, loss=dict(type='CrossEntropyLoss'))))
    randomize_(peer, 10)
    ours.load_state_dict(timm_to_mmpretrain_layout(peer.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    _both_modes(lambda t: ours(t, mode='tensor'), peer, [ours, peer], x)


def test_timm_features():
    peer = timm.create_model('hrnet_w18_small', pretrained=False, features_only=True, feature_location='')
    ours = HRNet(arch='w18_small')
    randomize_(peer, 11)
    state = {k: v for k, v in peer.state_dict().items() if not k.startswith('incre_modules.')}
    ours.load_state_dict(state, strict=True)
    _both_modes(ours, lambda t: peer(t)[1:], [ours, peer], torch.randn(2, 3, 64, 96))
