"""Parameter counts and GFLOPs of the paper's models (conv + linear multiply-adds / 2**30).

The reference rows are the official HRNet repositories' published numbers. The models are built on the
``meta`` device, so full-size counts (1024x2048 segmentation) take no compute.
"""
from __future__ import annotations

import pytest
import torch

from hrnet_mm.models import HRFuseScales, HRNet
from hrnet_mm.utils import count_macs, count_params
from hrnet_mm.utils.paper_models import Cls, Pose, Seg

BACKBONE_PARAMS = {'w18': 9_562_260, 'w30': 25_812_276, 'w32': 29_305_536, 'w40': 45_521_216,
                   'w44': 54_974_640, 'w48': 65_325_120, 'w64': 115_697_600, 'w18_small': 1_477_920,
                   'w18_small_v2': 3_860_720}

CLS = {  # arch: (params, GFLOPs at 224x224), official layout with conv biases
    'w18': (21_299_004, 3.99), 'w30': (37_712_220, 7.55), 'w32': (41_232_680, 8.31), 'w40': (57_557_160, 11.82),
    'w44': (67_064_984, 13.86), 'w48': (77_469_864, 16.09), 'w64': (128_059_944, 26.91),
    'w18_small': (13_187_464, 1.49), 'w18_small_v2': (15_597_464, 2.42)}

POSE = {  # arch: (params, GFLOPs at 256x192, GFLOPs at 384x288), 17 keypoints
    'w32': (28_536_113, 7.12, 16.02), 'w48': (63_595_745, 14.61, 32.88)}

SEG = {  # arch: (params or rounded millions, GFLOPs at 1024x2048, decimals of the published numbers)
    'w48': (65_859_379, 696.2), 'w18_small': (1.5e6, 31.1), 'w18_small_v2': (3.9e6, 71.6)}


def gflops(model, shape):
    return count_macs(model, shape)['total'] / 2 ** 30


@pytest.mark.parametrize('arch', sorted(BACKBONE_PARAMS))
def test_backbone_params(arch):
    with torch.device('meta'):
        assert count_params(HRNet(arch=arch)) == BACKBONE_PARAMS[arch]


@pytest.mark.parametrize('arch', sorted(CLS))
def test_classification_params_and_gflops(arch):
    with torch.device('meta'):
        m = Cls(arch)
    params, gf = CLS[arch]
    assert count_params(m) == params
    assert round(gflops(m, (3, 224, 224)), 2) == gf


def test_mmpretrain_layout_has_3840_fewer_params_at_w18():
    with torch.device('meta'):
        official = HRFuseScales('w18', layout='official')
        mmpretrain = HRFuseScales('w18', layout='mmpretrain')
    assert count_params(official) - count_params(mmpretrain) == 3_840


@pytest.mark.parametrize('arch', sorted(POSE))
def test_pose_params_and_gflops(arch):
    with torch.device('meta'):
        m = Pose(arch)
    params, gf_small, gf_large = POSE[arch]
    assert count_params(m) == params
    assert round(gflops(m, (3, 256, 192)), 2) == gf_small
    assert round(gflops(m, (3, 384, 288)), 2) == gf_large


@pytest.mark.parametrize('arch', sorted(SEG))
def test_segmentation_params_and_gflops(arch):
    with torch.device('meta'):
        m = Seg(arch)
    params, gf = SEG[arch]
    n = count_params(m)
    if isinstance(params, int):
        assert n == params
    else:
        assert round(n / 1e6, 1) == params / 1e6
    assert round(gflops(m, (3, 1024, 2048)), 1) == gf
