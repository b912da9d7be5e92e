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


def _onednn_convs(model):
    from hrnet_mm.deploy import OneDNNConv2d
    return [m for m in model.modules() if isinstance(m, OneDNNConv2d)]


def test_deploy_fuses_hrnet_convs_with_relu_and_sums():
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    d = to_deploy(m)
    convs = _onednn_convs(d)
    assert len(convs) == sum(isinstance(x, nn.Conv2d) for x in m.modules())
    assert any(c.relu and c.add for c in convs)  # residual sum + ReLU
    assert any(c.relu and not c.add for c in convs)
    assert d.out_channels == m.out_channels  # public attributes survive the rewrite
    assert not _onednn_convs(to_deploy(m, fuse=False))


def test_deploy_is_copyable_and_runs_with_grad_enabled():
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    d = to_deploy(m)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        d(x)  # packs the weights
    d2 = copy.deepcopy(d)
    x_grad = x.clone().requires_grad_()
    for out in (d2(x), d(x_grad)):  # a copy repacks; an input that needs grad takes the plain ops
        for a, b in zip(out, ref):
            assert rel_err(b.detach(), a) < 1e-4
    sum(o.sum() for o in d(x_grad)).backward()
    assert x_grad.grad is not None


def test_deploy_model_saves_whole_and_follows_the_onednn_switch():
    """torch.save of the whole deploy model after a call (the per-shape packed weights and prepared calls stay
    behind) loads into a model that gives the same outputs; with oneDNN switched off, the prepared calls are not
    used: the plain ops run."""
    import io

    from hrnet_mm.deploy import OneDNNConv2d
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    d = to_deploy(m)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref, out = m(x), d(x)
        buffer = io.BytesIO()
        torch.save(d, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        convs = [c for c in loaded.modules() if isinstance(c, OneDNNConv2d)]
        assert convs and not any(c._packed or c._plans or c._winograd for c in convs)
        for a, b in zip(loaded(x), out):
            assert rel_err(b, a) < 1e-4  # each copy times its own Winograd choices
        with torch.backends.mkldnn.flags(enabled=False):
            plain = d(x)
        assert all(len(c._plans) == 2 for c in d.modules() if isinstance(c, OneDNNConv2d) and c._plans)
        for a, b in zip(plain, ref):
            assert rel_err(b, a) < 1e-4


@pytest.mark.parametrize('relu,add,inplace', [(False, False, False), (True, False, False), (False, True, False),
                                              (True, True, False), (True, True, True)])
@pytest.mark.parametrize('stride', [1, 2])
def test_onednn_conv_equals_conv_add_relu(relu, add, inplace, stride):
    from hrnet_mm.deploy import OneDNNConv2d
    conv = randomize_(nn.Conv2d(8, 16, 3, stride=stride, padding=1))
    fused = OneDNNConv2d(conv, relu=relu, add=add, inplace=inplace)
    x = torch.randn(2, 8, 13, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = conv(x)
        other = torch.randn_like(y) if add else None
        ref = y + other if add else y
        ref = ref.relu() if relu else ref
        out = fused(x, other.clone() if add else None) if add else fused(x)
        assert rel_err(out, ref) < 1e-5
        if add:  # a summand that broadcasts takes the plain path
            other = torch.randn(1, 16, 1, 1)
            ref = conv(x) + other
            ref = ref.relu() if relu else ref
            assert rel_err(fused(x, other), ref) < 1e-5


def test_deploy_nchw_input_and_no_channels_last():
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = m(x)
        for d in (to_deploy(m), to_deploy(m, channels_last=False)):
            for a, b in zip(ref, d(x)):
                assert rel_err(b, a) < 1e-4


def test_deploy_tunes_the_allocator_unless_asked_not_to(monkeypatch):
    import hrnet_mm.deploy.fold as fold
    calls = []
    monkeypatch.setattr(fold, 'tune_cpu_allocator', lambda *a, **k: calls.append(a) or True)
    m = HRNet(extra=copy.deepcopy(TINY_EXTRA)).eval()
    to_deploy(m, tune_allocator=False)
    assert calls == []
    to_deploy(m)
    assert len(calls) == 1


def test_tune_cpu_allocator_arguments():
    from hrnet_mm.deploy import tune_cpu_allocator
    with pytest.raises(ValueError, match='mmap_threshold_mb'):
        tune_cpu_allocator(0, 256)
    with pytest.raises(ValueError, match='trim_threshold_mb'):
        tune_cpu_allocator(64, 32)
    if __import__('platform').libc_ver()[0] == 'glibc':
        from hrnet_mm.deploy import allocator_tuned
        assert tune_cpu_allocator() and allocator_tuned()


def test_deploy_compile_uses_freezing_without_leaking_config():
    import torch._inductor.config as inductor_config
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    before = inductor_config.freezing
    d = to_deploy(m, compile=True)
    assert d.options.get('freezing') is True
    assert not _onednn_convs(d)  # inductor fuses and packs itself
    assert to_deploy(m, compile=True, freezing=False).options.get('freezing') is None
    assert inductor_config.freezing == before


@pytest.mark.slow
def test_deploy_compiled_equals_training_ready_model():
    import torch._inductor.config as inductor_config
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    before = inductor_config.freezing
    d = to_deploy(m, compile=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
    out = d(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, out):
        assert rel_err(b, a) < 1e-4
    assert inductor_config.freezing == before


@pytest.mark.parametrize('config,library', [
    ('configs/demo/fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py', 'mmseg'),  # bilinear fusion + HRNetV2 neck
    ('configs/demo/faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py', 'mmdet'),  # HRNetV2p neck
])
def test_deploy_whole_task_model(config, library):
    """to_deploy on a whole mmseg/mmdet model: the features its heads see are unchanged (odd input size)."""
    import os.path as osp

    from mmengine.config import Config

    from hrnet_mm.registry import build_in_scope

    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    model = build_in_scope(library, Config.fromfile(osp.join(root, config)).model)
    randomize_(model.backbone)
    model.eval()
    deployed = to_deploy(model)
    x = torch.randn(1, 3, 97, 130)
    with torch.no_grad():
        ref = model.extract_feat(x)
        out = deployed.extract_feat(x.contiguous(memory_format=torch.channels_last))
    assert len(out) == len(ref)
    for a, b in zip(out, ref):
        assert rel_err(a, b) < 1e-4


def test_deploy_channels_last_backbone():
    m = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).to(memory_format=torch.channels_last).eval()
    d = to_deploy(m)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(d(x), m(x)):
            assert rel_err(a, b) < 1e-4


def test_deploy_of_a_whole_mask_rcnn_equals_the_model():
    """A whole mmdet Mask R-CNN (demo config, random weights): the deploy model's boxes, scores and masks equal
    the model's within float32 rounding (boxes within 0.01 px). The backbone and neck run channels_last inside and
    hand their maps on in NCHW: mmcv's RoIAlign reads a channels_last map on the CPU as if it were NCHW."""
    import os

    from conftest import ROOT
    from mmdet.structures import DetDataSample

    from hrnet_mm.apis import get_model

    model = randomize_(get_model(os.path.join(ROOT, 'configs', 'demo', 'mask-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py'),
                                 pretrained=False)).eval()
    with torch.no_grad():  # moderate logits and deltas: saturated scores would tie, and ties make NMS arbitrary
        for layer in (model.rpn_head.rpn_cls, model.rpn_head.rpn_reg, model.roi_head.bbox_head.fc_cls,
                      model.roi_head.bbox_head.fc_reg):
            layer.weight.mul_(0.03)
            layer.bias.zero_()
    deploy = to_deploy(model)
    x = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    samples = [DetDataSample(metainfo=dict(img_shape=(128, 160), ori_shape=(128, 160), scale_factor=(1.0, 1.0)))]
    with torch.no_grad():
        ref = model.predict(x, copy.deepcopy(samples))[0].pred_instances
        got = deploy.predict(x, copy.deepcopy(samples))[0].pred_instances
    assert len(ref) > 0 and len(got) == len(ref)
    assert (got.bboxes - ref.bboxes).abs().max() < 1e-2 and (got.scores - ref.scores).abs().max() < 1e-4
    assert (got.masks != ref.masks).float().mean() < 1e-3
