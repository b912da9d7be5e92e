"""`mim train mmdet <hrnet_mm config> --gpus 0` trains from the venv, and `--resume` continues from the
checkpoint that mmengine wrote (this fails on torch 2.14 without hrnet_mm's compat fix)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

CONFIG = os.path.join(ROOT, 'configs', 'demo', 'faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py')


def _mim(cwd, *args):
    mim = os.path.join(os.path.dirname(sys.executable), 'mim')
    return subprocess.run([mim, 'train', 'mmdet', CONFIG, '--gpus', '0', '--work-dir', 'work', *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_mim_train_then_resume(tmp_path):
    from hrnet_mm.datasets import make_coco_detection
    make_coco_detection(str(tmp_path / 'data' / 'demo' / 'coco'), {'train': 8, 'val': 4})
    first = _mim(tmp_path, '--cfg-options', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1')
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (tmp_path / 'work' / 'epoch_1.pth').exists()
    assert 'coco/bbox_mAP' in first.stdout + first.stderr
    second = _mim(tmp_path, '--resume', '--cfg-options', 'train_cfg.max_epochs=2', 'train_cfg.val_interval=1')
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert 'resumed epoch: 1' in out
    assert 'Epoch(train) [2]' in out and 'Epoch(train) [1]' not in out
    assert (tmp_path / 'work' / 'epoch_2.pth').exists()
