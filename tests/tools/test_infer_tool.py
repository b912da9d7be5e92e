"""``tools/infer.py``: each demo config, trained briefly through ``tools/train.py`` on its synthetic set in a fresh
cwd, draws its predictions on held-out (validation) images with its task library's inferencer/visualizer; the PNGs
must open, have the input's size and differ from the input. Fast tests cover the one-line errors (exit status 2,
no traceback unless ``--debug``)."""
from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
from typing import List, Sequence

import numpy as np
import pytest
from conftest import ROOT, single_thread_env
from PIL import Image

DEMO = os.path.join(ROOT, 'configs', 'demo')
INFER = os.path.join(ROOT, 'tools', 'infer.py')
DET_CONFIG = os.path.join(DEMO, 'faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py')
SEG_CONFIG = os.path.join(DEMO, 'fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py')
POSE_CONFIG = os.path.join(DEMO, 'td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py')
CLS_CONFIG = os.path.join(DEMO, 'hrnet-tiny_1xb8-6e_demo-imagenet.py')


def _run(cwd, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=single_thread_env(), capture_output=True, text=True,
                          timeout=timeout)


def _ok(cwd, *args: str) -> subprocess.CompletedProcess:
    proc = _run(cwd, *args)
    assert proc.returncode == 0, f'{" ".join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}'
    return proc


def _infer(cwd, *args: str) -> subprocess.CompletedProcess:
    return _run(cwd, INFER, *args)


def _train(cwd, kind: str, config: str, options: Sequence[str]) -> str:
    """Writes a small demo set of ``kind`` under ``cwd/data/demo``, trains briefly; returns the last checkpoint."""
    folder = kind.replace('-', '_')
    _ok(cwd, '-m', 'hrnet_mm.datasets', kind, os.path.join('data', 'demo', folder), '--train', '8', '--val', '2')
    _ok(cwd, os.path.join(ROOT, 'tools', 'train.py'), config, '--work-dir', 'work', '--cfg-options', *options)
    with open(os.path.join(cwd, 'work', 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    assert os.path.isfile(ckpt), ckpt
    return ckpt


def _check_outputs(cwd, images: List[str], out_dir: str, proc: subprocess.CompletedProcess) -> None:
    """Each input has ``out_dir/<stem>.png``: a valid image of the input's size that differs from the input."""
    assert f'{len(images)} image(s) written' in proc.stdout, proc.stdout
    for image in images:
        out = os.path.join(cwd, out_dir, os.path.splitext(os.path.basename(image))[0] + '.png')
        assert os.path.isfile(out), (out, os.listdir(os.path.join(cwd, out_dir)))
        assert out in [os.path.join(cwd, line) for line in proc.stdout.splitlines()], proc.stdout
        with Image.open(out) as im:
            assert im.format == 'PNG'
            drawn = np.asarray(im.convert('RGB'), dtype=np.float64)
        with Image.open(os.path.join(cwd, image)) as im:
            original = np.asarray(im.convert('RGB'), dtype=np.float64)
        assert drawn.shape == original.shape, (out, drawn.shape, original.shape)
        # JPEG inputs decode identically through PIL and OpenCV up to rounding (< 1 level on average); the
        # drawings change far more.
        diff = np.abs(drawn - original).mean()
        assert diff > 1.0, (out, diff)


def _val_images(cwd, pattern: str) -> List[str]:
    images = sorted(os.path.relpath(p, cwd) for p in glob.glob(os.path.join(cwd, pattern), recursive=True))
    assert len(images) >= 2, images
    return images


@pytest.mark.slow
def test_detection_infer(tmp_path):
    ckpt = _train(tmp_path, 'coco', DET_CONFIG, ['train_cfg.max_epochs=1', 'train_cfg.val_interval=100'])
    images = _val_images(tmp_path, 'data/demo/coco/val/*.jpg')[:2]
    # Score threshold 0: the briefly trained detector's boxes are drawn whatever their scores.
    proc = _infer(tmp_path, DET_CONFIG, ckpt, *images, '--out-dir', 'vis', '--score-thr', '0', '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_outputs(tmp_path, images, 'vis', proc)
    # a checkpoint of another model is refused
    other = os.path.join(tmp_path, 'other.pth')
    import torch
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(1, 3, 3, 3)}}, other)
    proc = _infer(tmp_path, DET_CONFIG, other, *images, '--out-dir', 'vis2')
    assert proc.returncode == 2 and 'does not fit the model' in proc.stderr, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    assert not os.path.exists(os.path.join(tmp_path, 'vis2'))


@pytest.mark.slow
def test_segmentation_infer_on_folder(tmp_path):
    ckpt = _train(tmp_path, 'cityscapes', SEG_CONFIG,
                  ['train_cfg.max_iters=4', 'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=4'])
    images = _val_images(tmp_path, 'data/demo/cityscapes/leftImg8bit/val/**/*.png')
    proc = _infer(tmp_path, SEG_CONFIG, ckpt, 'data/demo/cityscapes/leftImg8bit/val', '--out-dir', 'vis')
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_outputs(tmp_path, images, 'vis', proc)
    proc = _infer(tmp_path, SEG_CONFIG, ckpt, *images[:2], '--out-dir', 'vis_files')
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_outputs(tmp_path, images[:2], 'vis_files', proc)


@pytest.mark.slow
def test_pose_infer(tmp_path):
    ckpt = _train(tmp_path, 'coco-keypoints', POSE_CONFIG,
                  ['train_cfg.max_epochs=1', 'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=1'])
    images = _val_images(tmp_path, 'data/demo/coco_keypoints/val/*.jpg')[:2]
    proc = _infer(tmp_path, POSE_CONFIG, ckpt, *images, '--out-dir', 'vis', '--score-thr', '0',
                  '--det-model', 'whole_image')
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_outputs(tmp_path, images, 'vis', proc)


@pytest.mark.slow
def test_classification_infer(tmp_path):
    ckpt = _train(tmp_path, 'imagenet', CLS_CONFIG,
                  ['train_cfg.max_epochs=1', 'train_cfg.val_interval=100', 'default_hooks.checkpoint.interval=1'])
    images = _val_images(tmp_path, 'data/demo/imagenet/val/**/*.JPEG')
    proc = _infer(tmp_path, CLS_CONFIG, ckpt, 'data/demo/imagenet/val', '--out-dir', 'vis', '--topk', '2')
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_outputs(tmp_path, images, 'vis', proc)


# Fast error cases: each exits with status 2 and one line `infer.py: error: ...` on stderr, no traceback.


def _assert_error(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith('infer.py: error:')]
    assert len(lines) == 1 and text in lines[0], proc.stderr[-3000:]


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / 'img.png'
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(path)
    return str(path)


def test_missing_config(tmp_path, image):
    _assert_error(_infer(tmp_path, 'nope.py', 'x.pth', image, '--out-dir', 'vis'), 'config file not found: nope.py')


def test_unknown_scope(tmp_path, image):
    (tmp_path / 'cfg.py').write_text("default_scope = 'mmfoo'\n")
    _assert_error(_infer(tmp_path, 'cfg.py', 'x.pth', image, '--out-dir', 'vis'), "unsupported default_scope 'mmfoo'")


def test_uninstalled_scope(tmp_path, image, monkeypatch, capsys):
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        import infer
    finally:
        sys.path.remove(os.path.join(ROOT, 'tools'))
    (tmp_path / 'cfg.py').write_text("default_scope = 'mmpretrain'\n")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'mmpretrain'
                        else find_spec(name, *a))
    with pytest.raises(SystemExit) as exc:
        infer.main([str(tmp_path / 'cfg.py'), 'x.pth', image, '--out-dir', str(tmp_path / 'vis')])
    assert exc.value.code == 2
    assert 'needs the package mmpretrain, which is not installed' in capsys.readouterr().err


def test_missing_checkpoint(tmp_path, image):
    _assert_error(_infer(tmp_path, DET_CONFIG, 'nope.pth', image, '--out-dir', 'vis'),
                  'checkpoint file not found: nope.pth')


def test_checkpoint_not_loadable(tmp_path, image):
    (tmp_path / 'page.pth').write_text('<!DOCTYPE html><html><body>404 Not Found</body></html>')
    _assert_error(_infer(tmp_path, SEG_CONFIG, 'page.pth', image, '--out-dir', 'vis'),
                  'page.pth: the file is an HTML/XML page, not a checkpoint')
    (tmp_path / 'noise.pth').write_bytes(b'PK\x03\x04' + bytes(range(256)) * 4)  # a damaged zip
    _assert_error(_infer(tmp_path, SEG_CONFIG, '--checkpoint', 'noise.pth', image, '--out-dir', 'vis'),
                  'noise.pth: cannot be read as a checkpoint')


def test_checkpoint_of_another_model(tmp_path, image):
    import torch
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(1, 3, 3, 3)}}, tmp_path / 'other.pth')
    _assert_error(_infer(tmp_path, SEG_CONFIG, 'other.pth', image, '--out-dir', 'vis'), 'does not fit the model')


def test_unreadable_image_and_empty_folder(tmp_path, image):
    (tmp_path / 'ckpt.pth').write_bytes(b'')  # never loaded: images are checked first
    (tmp_path / 'bad.png').write_text('not an image')
    _assert_error(_infer(tmp_path, SEG_CONFIG, 'ckpt.pth', image, 'bad.png', '--out-dir', 'vis'),
                  'cannot read image bad.png')
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.txt').write_text('no images here')
    _assert_error(_infer(tmp_path, SEG_CONFIG, 'ckpt.pth', 'empty', '--out-dir', 'vis'), 'no images')
    _assert_error(_infer(tmp_path, SEG_CONFIG, 'ckpt.pth', 'missing.jpg', '--out-dir', 'vis'),
                  'image file or folder not found')
    # --debug shows the traceback instead
    proc = _infer(tmp_path, SEG_CONFIG, 'ckpt.pth', 'bad.png', '--out-dir', 'vis', '--debug')
    assert proc.returncode != 0 and 'Traceback' in proc.stderr, proc.stderr[-3000:]
