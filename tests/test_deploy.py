"""Deploy mode: BN folded into convs, channels_last; the function stays the same."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from conftest import TINY_EXTRA, randomize_, rel_err

from hrnet_mm.deploy import fold_batchnorm, to_deploy
from hrnet_mm.models import HRNet, HRNetV2Neck, HRNetV2pNeck


@pytest.mark.parametrize('size', [(64, 64), (97, 130)])
def test_deploy_backbone_equals_training_ready_model(size):
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    d = to_deploy(m)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in d.modules())
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # the original is untouched
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        for a, b in zip(m(x), d(x.contiguous(memory_format=torch.channels_last))):
            assert rel_err(b, a) < 1e-4


def test_deploy_with_necks():
    bb = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA)))
    necks = (HRNetV2Neck(bb.out_channels, out_channels=16),
             HRNetV2pNeck(bb.out_channels, 16, norm_cfg=dict(type='BN')))
    for neck in necks:
        model = randomize_(nn.Sequential(copy.deepcopy(bb), neck)).eval()
        d = to_deploy(model)
        x = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            for a, b in zip(model(x), d(x)):
                assert rel_err(b, a) < 1e-4


def test_fold_refuses_train_mode():
    with pytest.raises(ValueError, match='eval mode'):
        fold_batchnorm(HRNet(extra=copy.deepcopy(TINY_EXTRA)).train())
