"""Published-layout checkpoints load into hrnet_mm configs and give the peers' predictions.

For one config per task library, the peer's model is built from the peer's own installed config (SyncBN
replaced by BN, no pretrained init), its weights are randomized with a seed and saved as a full checkpoint.
That file, as it is, is the ``load_from`` of the matching hrnet_mm config: mmengine's ``Runner`` is built from the
config and loads it (``load_or_resume``), the tools' strict check (every weight present with its shape, what
``tools/test.py CONFIG CHECKPOINT`` requires) passes, and both models predict on the same input in eval mode.
Both sides run the same float32 kernels in the same order, so the outputs are equal up to a few ulps; the tolerance
is a relative error of 1e-5 (see tests/models/test_parity.py), boxes, scores, labels and keypoints compared with
the same tolerance.

The official/timm ImageNet layouts round-trip through the converter with equal logits, including the
bias folding into BN statistics for the mmpretrain head layout.
"""
from __future__ import annotations

import copy
import importlib
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import ROOT, randomize_, rel_err
from mmengine.config import Config, ConfigDict
from mmengine.runner.checkpoint import load_checkpoint

from hrnet_mm.models.checkpoint import CheckpointMismatchError
from hrnet_mm.registry import build_in_scope
from hrnet_mm.zoo.convert import changed, convert_checkpoint, convert_state_dict, detect_format

TOL = 1e-5


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _bn(obj):
    """SyncBN needs a process group in forward; BN has the same parameters."""
    if isinstance(obj, dict):
        return {k: ('BN' if k == 'type' and v == 'SyncBN' else _bn(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_bn(v) for v in obj)
    return obj


def _model_cfg(path: str, **preprocessor):
    cfg = _plain(Config.fromfile(path).to_dict())
    model = copy.deepcopy(cfg['model'])
    if cfg.get('data_preprocessor') is not None:
        model.setdefault('data_preprocessor', cfg['data_preprocessor'])
    model = _bn(model)
    model.pop('pretrained', None)
    model['backbone'].pop('init_cfg', None)
    model['backbone'].pop('pretrained', None)
    model.get('data_preprocessor', {}).update(preprocessor)
    return model


def _build(library: str, model_cfg) -> torch.nn.Module:
    return build_in_scope(library, ConfigDict(model_cfg)).eval()


def _peer_path(library: str, rel: str) -> str:
    return osp.join(osp.dirname(importlib.import_module(library).__file__), '.mim', 'configs', rel)


def _ours_path(rel: str) -> str:
    return osp.join(ROOT, 'configs', rel)


def _runner_model(config: str, checkpoint: str, tmp_path, **cfg_options) -> torch.nn.Module:
    """The model of ``config`` as mmengine's Runner holds it after loading ``load_from=checkpoint``; the strict
    check of hrnet_mm's tools passes on it."""
    from mmengine.runner import Runner

    from hrnet_mm.cli.checkpoint_checks import check_checkpoint_fits
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(dict(load_from=checkpoint, work_dir=str(tmp_path / 'work'), **cfg_options))
    cfg.model.pop('pretrained', None)
    cfg.model.backbone.pop('init_cfg', None)
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    check_checkpoint_fits(runner.model, checkpoint, config)
    return runner.model.eval()


def _save_peer(tmp_path, peer, seed) -> str:
    randomize_(peer, seed)
    path = str(tmp_path / 'peer.pth')
    torch.save({'state_dict': peer.state_dict(), 'meta': {'note': 'random weights'}}, path)
    return path


@torch.no_grad()
def _calibrate_bn(model, forward, x):
    """Sets every BN's running statistics to those of ``forward(x)`` (random BN statistics leave a deep HRNet's
    features at ~1e9, where a detector proposes nothing); the parameters stay randomized."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.eval()
    for m in norms:  # directly: the detector's HRNet has norm_eval=True
        m.train()
    forward(x)
    model.eval()


def _load_ours(ours, path):
    load_checkpoint(ours, path, map_location='cpu', strict=True, logger='silent')


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _close(a, b, what):
    err = rel_err(torch.as_tensor(a).float(), torch.as_tensor(b).float())
    assert err < TOL, f'{what}: relative error {err:.2e}'


def test_mmdet_faster_rcnn_checkpoint_predicts_the_same(tmp_path):
    from mmdet.structures import DetDataSample
    peer = _build('mmdet', _model_cfg(_peer_path('mmdet', 'hrnet/faster-rcnn_hrnetv2p-w32-1x_coco.py')))
    randomize_(peer, 21)
    g = torch.Generator().manual_seed(0)
    _calibrate_bn(peer, peer.extract_feat, torch.randn(2, 3, 160, 224, generator=g))
    peer.rpn_head.rpn_reg.weight.data.mul_(0.1)  # proposals near the anchors
    path = str(tmp_path / 'peer.pth')
    torch.save({'state_dict': peer.state_dict(), 'meta': {'note': 'random weights'}}, path)
    _, notes = convert_state_dict(torch.load(path)['state_dict'], 'mmdet', 'hrnet_mm')
    assert not changed(notes)  # the keys already match: loaded as is
    ours = _runner_model(_ours_path('detection/faster-rcnn_hrnetv2p-w32-1x_coco.py'), path, tmp_path)
    for model in (ours, peer):  # random weights score every class near 1/80: keep all boxes on both sides
        model.roi_head.test_cfg['score_thr'] = 0.0
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 160, 224), generator=g, dtype=torch.uint8)
    meta = dict(img_shape=(160, 224), ori_shape=(160, 224), scale_factor=(1.0, 1.0))
    outs = []
    for model in (ours, peer):
        with torch.no_grad():
            outs.append(model.test_step(dict(inputs=[img.clone()], data_samples=[DetDataSample(metainfo=meta)]))[0])
    a, b = (o.pred_instances for o in outs)
    assert len(b.bboxes) > 0
    assert torch.equal(a.labels, b.labels)
    _close(a.bboxes, b.bboxes, 'boxes')
    _close(a.scores, b.scores, 'scores')


@pytest.mark.parametrize('config,peer_config', [
    ('fcn_hr18_4xb2-160k_cityscapes-512x1024.py', 'hrnet/fcn_hr18_4xb2-160k_cityscapes-512x1024.py'),
    ('ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py', 'ocrnet/ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py')])
def test_mmseg_checkpoint_loads_as_it_is_and_gives_the_same_logits(tmp_path, config, peer_config):
    small = dict(size=(128, 256))  # the peer pads to its 512x1024 crop; both sides pad to a smaller size instead
    peer = _build('mmseg', _model_cfg(_peer_path('mmseg', peer_config), **small))
    path = _save_peer(tmp_path, peer, 22)
    _, notes = convert_state_dict(torch.load(path)['state_dict'], 'mmseg', 'hrnet_mm')
    assert not changed(notes)  # the decode heads are the peer's: no conversion
    ours = _runner_model(_ours_path(f'segmentation/{config}'), path, tmp_path, model=dict(data_preprocessor=small))
    g = torch.Generator().manual_seed(1)
    data = dict(inputs=[torch.randint(0, 256, (3, 128, 256), generator=g, dtype=torch.uint8)])
    logits = []
    for model in (ours, peer):
        with torch.no_grad():
            batch = model.data_preprocessor(copy.deepcopy(data), False)
            logits.append(model(batch['inputs'], mode='tensor'))
    _close(logits[0], logits[1], 'segmentation logits')


COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


def test_mmpose_topdown_checkpoint_predicts_the_same(tmp_path):
    from mmpose.structures import PoseDataSample
    peer = _build('mmpose', _model_cfg(_peer_path(
        'mmpose', 'body_2d_keypoint/topdown_heatmap/coco/td-hm_hrnet-w32_8xb64-210e_coco-256x192.py')))
    path = _save_peer(tmp_path, peer, 23)
    ours = _runner_model(_ours_path('pose/td-hm_hrnet-w32_8xb64-210e_coco-256x192.py'), path, tmp_path)
    g = torch.Generator().manual_seed(2)
    img = torch.randint(0, 256, (3, 256, 192), generator=g, dtype=torch.uint8)
    meta = dict(input_size=(192, 256), input_center=np.array([96.0, 128.0]), input_scale=np.array([192.0, 256.0]),
                flip_indices=COCO_FLIP, img_shape=(256, 192), ori_shape=(256, 192))
    heatmaps, keypoints, scores = [], [], []

    def sample():
        from mmengine.structures import InstanceData
        s = PoseDataSample(metainfo=meta)
        s.gt_instances = InstanceData(bboxes=np.array([[0.0, 0.0, 192.0, 256.0]]), bbox_scores=np.ones(1))
        return s

    for model in (ours, peer):
        with torch.no_grad():
            batch = model.data_preprocessor(dict(inputs=[img.clone()], data_samples=[sample()]))
            heatmaps.append(model(batch['inputs'], None, mode='tensor'))
            pred = model.test_step(dict(inputs=[img.clone()], data_samples=[sample()]))[0]
        keypoints.append(pred.pred_instances.keypoints)
        scores.append(pred.pred_instances.keypoint_scores)
    _close(heatmaps[0], heatmaps[1], 'heatmaps')
    _close(keypoints[0], keypoints[1], 'keypoints')
    _close(scores[0], scores[1], 'keypoint scores')


def test_mmpretrain_classifier_checkpoint_predicts_the_same(tmp_path):
    peer = _build('mmpretrain', _model_cfg(_peer_path('mmpretrain', 'hrnet/hrnet-w18_4xb32_in1k.py')))
    path = _save_peer(tmp_path, peer, 24)
    ours = _runner_model(_ours_path('classification/hrnet-w18_4xb32_in1k.py'), path, tmp_path)
    g = torch.Generator().manual_seed(3)
    data = dict(inputs=[torch.randint(0, 256, (3, 96, 96), generator=g, dtype=torch.uint8) for _ in range(2)])
    preds = []
    for model in (ours, peer):
        with torch.no_grad():
            preds.append(torch.stack([s.pred_score for s in model.test_step(copy.deepcopy(data))]))
    _close(preds[0], preds[1], 'class scores')


timm = pytest.importorskip('timm')


def _classifier(arch: str, layout: str, num_classes: int = 10) -> torch.nn.Module:
    return _build('mmpretrain', dict(
        type='ImageClassifier', backbone=dict(type='hrnet_mm.HRNet', arch=arch),
        neck=[dict(type='hrnet_mm.HRFuseScales', in_channels=arch, layout=layout),
              dict(type='GlobalAveragePooling')],
        head=dict(type='LinearClsHead', in_channels=2048, num_classes=num_classes,
                  loss=dict(type='CrossEntropyLoss'))))


@pytest.mark.parametrize('src', ['timm', 'official'])
@pytest.mark.parametrize('layout', ['mmpretrain', 'official'])
def test_imagenet_layouts_round_trip_with_equal_logits(src, layout):
    peer = randomize_(timm.create_model('hrnet_w18_small', pretrained=False, num_classes=10), 30).eval()
    state = peer.state_dict()  # the official HRNet-Image-Classification keys are timm's
    ours = _classifier('w18_small', layout)
    converted, notes = convert_state_dict(state, src, 'hrnet_mm', head=layout)
    ours.load_state_dict(converted, strict=True)
    if layout == 'mmpretrain':
        assert any('folded' in n for n in notes)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _close(ours(x, mode='tensor'), peer(x), f'{src} -> hrnet_mm ({layout} head) logits')
    back, _ = convert_state_dict(ours.state_dict(), 'hrnet_mm', src)
    assert set(back) == set(state)
    again = timm.create_model('hrnet_w18_small', pretrained=False, num_classes=10).eval()
    again.load_state_dict(back, strict=True)
    with torch.no_grad():
        _close(again(x), peer(x), f'{src} -> hrnet_mm -> {src} logits')


def test_official_to_mmpretrain_through_the_tool(tmp_path):
    import sys
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import convert_checkpoint as tool
    peer = randomize_(timm.create_model('hrnet_w18_small', pretrained=False, num_classes=10), 31).eval()
    src = tmp_path / 'hrnet_w18_small_official.pth'
    torch.save(peer.state_dict(), src)
    dst = tmp_path / 'converted.pth'
    assert tool.main([str(src), str(dst), '--from', 'official', '--to', 'mmpretrain']) == 0
    ours = _classifier('w18_small', 'mmpretrain')
    _load_ours(ours, str(dst))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _close(ours(x, mode='tensor'), peer(x), 'official -> mmpretrain file logits')
    # keys that already match: nothing written
    same = tmp_path / 'same.pth'
    assert tool.main([str(dst), str(same), '--from', 'mmpretrain', '--to', 'hrnet_mm']) == 0
    assert not same.exists()


def test_converter_refuses_checkpoints_of_another_task(tmp_path, capsys):
    import sys
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    import convert_checkpoint as tool
    seg = {'state_dict': {'backbone.conv1.weight': torch.zeros(1), 'decode_head.conv_seg.weight': torch.zeros(1)}}
    assert detect_format(seg['state_dict']) == 'mmseg'
    with pytest.raises(CheckpointMismatchError, match='look like a mmseg model, not mmdet'):
        convert_checkpoint(seg, 'mmdet', 'hrnet_mm', source='seg.pth')
    with pytest.raises(CheckpointMismatchError, match='not a bare official ImageNet'):
        convert_checkpoint(seg, 'official', 'hrnet_mm', source='seg.pth')
    path = tmp_path / 'seg.pth'
    torch.save(seg, path)
    assert tool.main([str(path), str(tmp_path / 'x.pth'), '--from', 'official', '--to', 'hrnet_mm']) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'seg.pth' in err and 'is --from official right?' in err
    html = tmp_path / 'page.pth'
    html.write_bytes(b'<!DOCTYPE html><html><body>Access denied</body></html>')
    assert tool.main([str(html), str(tmp_path / 'y.pth'), '--from', 'mmseg', '--to', 'hrnet_mm']) == 1
    assert 'page.pth' in capsys.readouterr().err


@pytest.mark.slow
def test_test_tool_evaluates_a_peer_saved_ocrnet_checkpoint(tmp_path):
    """``tools/test.py CONFIG CHECKPOINT`` with mmseg's own checkpoint layout: the file saved from mmseg's OCRNet
    model loads into hrnet_mm's config of the same name (the tool's strict check passes) and is evaluated."""
    import glob
    import json
    import os
    import subprocess
    import sys

    from hrnet_mm.datasets import make_cityscapes_seg
    make_cityscapes_seg(str(tmp_path / 'data' / 'cityscapes'), {'train': 1, 'val': 3})
    name = 'ocrnet_hr18s_4xb2-40k_cityscapes-512x1024.py'
    peer = _build('mmseg', _model_cfg(_peer_path('mmseg', f'ocrnet/{name}')))
    path = _save_peer(tmp_path, peer, 25)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'test.py'), _ours_path(f'segmentation/{name}'), path,
         '--work-dir', 'work', '--cfg-options', 'test_dataloader.dataset.data_root=data/cityscapes',
         'test_dataloader.dataset.pipeline.1.scale=(160,80)', 'test_dataloader.num_workers=0',
         'test_dataloader.persistent_workers=False'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (metrics,) = [p for p in glob.glob(str(tmp_path / 'work' / '*' / '*.json'))]
    with open(metrics) as f:
        assert 'mIoU' in json.loads(f.read().strip().splitlines()[-1])
