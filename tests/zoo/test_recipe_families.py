"""One config of each recipe family that the generated configs added trains and scores clearly above chance.

Each config in configs/demo below inherits a generated config (``_base_ = 'hrnet_mm::<task>/<peer file>'``), so
the peer's model type, heads, losses, codec and evaluator are those of the recipe; it shrinks the network, the
input size and the schedule for a CPU, and reads a small synthetic set in the dataset's real format
(:mod:`hrnet_mm.datasets`). ``tools/train.py`` trains it in a fresh directory, the loss must fall, and
``tools/test.py`` scores the last checkpoint with the family's own metric (the hand model goes through ``mim
train mmpose`` and ``mim test mmpose`` instead): OCRNet (Cityscapes, mIoU), Mask R-CNN
2x (COCO boxes and masks, bbox/segm mAP), DEKR bottom-up (COCO keypoints with two people an image, OKS AP), face
landmarks (COFW, NME) and hand keypoints (OneHand10K, PCK/EPE). Where chance is not plain, the test computes it on
the same data: the mean shape placed in each ground-truth box.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from typing import Dict

import numpy as np
import pytest
from conftest import ROOT, json_lines, run_tool, single_thread_env, training_loss_fell

DEMO = os.path.join(ROOT, 'configs', 'demo')
MIM = os.path.join(os.path.dirname(sys.executable), 'mim')


def _mim(cwd, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([MIM, *args], cwd=cwd, env=single_thread_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f'mim {" ".join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}'
    return proc


def _train_and_test(cwd, pkg: str, config: str, use_mim: bool = False) -> Dict[str, object]:
    """``tools/train.py`` (or ``mim train``) of the demo config ``config`` in ``cwd``, checks that the loss fell,
    then ``tools/test.py`` (``mim test``) of the last checkpoint; returns the test metrics."""
    config = os.path.join(DEMO, config)
    if use_mim:
        _mim(cwd, 'train', pkg, config, '--gpus', '0', '--work-dir', 'work')
    else:
        run_tool(cwd, 'train.py', config, '--work-dir', 'work')
    with open(os.path.join(cwd, 'work', 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    assert os.path.isfile(os.path.join(cwd, ckpt)), ckpt

    (scalars,) = glob.glob(os.path.join(cwd, 'work', '*', 'vis_data', 'scalars.json'))
    first, last = training_loss_fell(scalars)

    if use_mim:
        _mim(cwd, 'test', pkg, config, '--checkpoint', ckpt, '--gpus', '0', '--work-dir', 'work_test')
    else:
        run_tool(cwd, 'test.py', config, ckpt, '--work-dir', 'work_test')
    (metrics,) = [p for p in glob.glob(os.path.join(cwd, 'work_test', '*', '*.json'))
                  if os.path.basename(p) != 'scalars.json']
    result = json_lines(metrics)[-1]
    print(f'{pkg} {os.path.basename(config)}: loss {first:.4g} -> {last:.4g}; test {result}')
    return result


def _mean_shape_errors(train_ann: str, test_ann: str):
    """Per test image: (distances of the mean training shape, placed in the test box, to the ground truth; the
    ground-truth keypoints; the box) -- what a model that learned nothing but the average shape predicts."""
    def load(path):
        with open(path) as f:
            data = json.load(f)
        return [(np.array(a['keypoints'], float).reshape(-1, 3)[:, :2], np.array(a['bbox'], float))
                for a in data['annotations']]
    train, test = load(train_ann), load(test_ann)
    mean = np.mean([(k - b[:2]) / b[2:] for k, b in train], axis=0)
    return [(np.linalg.norm(mean * b[2:] + b[:2] - k, axis=1), k, b) for k, b in test]


@pytest.mark.slow
def test_ocrnet_trains_above_chance(tmp_path):
    from hrnet_mm.datasets import make_cityscapes_seg
    make_cityscapes_seg(str(tmp_path / 'data' / 'demo' / 'cityscapes'))
    metrics = _train_and_test(tmp_path, 'mmseg', 'ocrnet_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py')
    # As for the FCN demo: one class everywhere gets mIoU < 4.4 over the 8 classes present. Measured ~75.
    assert metrics['mIoU'] > 40, metrics


@pytest.mark.slow
def test_mask_rcnn_2x_trains_above_chance(tmp_path):
    from hrnet_mm.datasets import make_coco_detection
    make_coco_detection(str(tmp_path / 'data' / 'demo' / 'coco'), {'train': 48, 'val': 8})
    metrics = _train_and_test(tmp_path, 'mmdet', 'mask-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py')
    # Random boxes or masks essentially never reach IoU 0.5 with the right class: chance mAP ~ 0. Measured over
    # seeds 0-5: bbox mAP@0.5 0.71-0.84, segm mAP 0.41-0.63.
    assert metrics['coco/bbox_mAP_50'] > 0.2, metrics
    assert metrics['coco/segm_mAP'] > 0.1, metrics


@pytest.mark.slow
def test_dekr_bottom_up_finds_several_people_above_chance(tmp_path):
    from hrnet_mm.datasets.__main__ import write
    write('coco-keypoints-multi', str(tmp_path / 'data' / 'demo' / 'coco_keypoints_multi'))
    metrics = _train_and_test(tmp_path, 'mmpose', 'dekr_hrnet-tiny_1xb4-15e_demo-coco-128x128.py')
    # OKS AP over two people an image, found without boxes: a chance pose is nowhere near any person's keypoints
    # (AP ~ 0). Measured: AP 0.28, AP@0.5 0.89.
    assert metrics['coco/AP@0.5' if 'coco/AP@0.5' in metrics else 'coco/AP .5'] > 0.5, metrics
    assert metrics['coco/AP'] > 0.1, metrics
    # The trained model through tools/infer.py, as a user runs it on pictures: bottom-up, so no detector; its COCO
    # results scored by pycocotools against the same annotations reach the test's AP@0.5 band.
    from hrnet_mm.cli.demo import coco_keypoint_ap
    with open(tmp_path / 'work' / 'last_checkpoint') as f:
        ckpt = f.read().strip()
    data = tmp_path / 'data' / 'demo' / 'coco_keypoints_multi'
    proc = run_tool(tmp_path, 'infer.py', os.path.join(DEMO, 'dekr_hrnet-tiny_1xb4-15e_demo-coco-128x128.py'), ckpt,
                    str(data / 'val'), '--out-dir', 'pictures', '--pred-out', 'people.json')
    assert 'image(s) written' in proc.stdout and 'detector' not in proc.stderr.lower()
    ap = coco_keypoint_ap(str(data / 'annotations' / 'person_keypoints_val.json'), str(tmp_path / 'people.json'))
    print(f'DEKR through tools/infer.py: {ap}')
    assert ap['AP50'] > 0.5 and ap['detections'] >= 2 * len(os.listdir(data / 'val')) * 0.8, ap
    # Exported whole and run by the PyTorch-free runtime on the same pictures: the same people and keypoints.
    config = os.path.join(DEMO, 'dekr_hrnet-tiny_1xb4-15e_demo-coco-128x128.py')
    run_tool(tmp_path, os.path.join('deploy', 'export_onnx.py'), config, ckpt, '--exporter', 'torchscript',
             '--shape', '128', '--out', 'dekr.onnx')
    proc = subprocess.run([sys.executable, '-m', 'hrnet_mm_runtime', 'dekr.onnx', str(data / 'val'), '--out-dir',
                           'runtime_pictures', '--pred-out', 'runtime.json'], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=single_thread_env())
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / 'people.json') as f, open(tmp_path / 'runtime.json') as g:
        want, got = json.load(f), json.load(g)
    assert [p['image_id'] for p in got] == [p['image_id'] for p in want]
    error = np.abs(np.array([p['keypoints'] for p in got]) - np.array([p['keypoints'] for p in want]))
    print(f'DEKR runtime vs tools/infer.py: {len(got)} people, keypoint and score differences up to {error.max()}')
    assert error.max() <= 0.01  # the JSON's 0.001 px rounding and onnxruntime's float error


@pytest.mark.slow
def test_face_landmarks_train_above_chance(tmp_path):
    from hrnet_mm.datasets import make_face_landmarks
    root = tmp_path / 'data' / 'demo' / 'cofw'
    anns = make_face_landmarks(str(root))
    # NME normalised by the distance of landmarks 8 and 9 (mmpose's choice for COFW)
    chance = np.mean([d.mean() / np.linalg.norm(k[8] - k[9]) for d, k, _ in
                      _mean_shape_errors(anns['train'], anns['test'])])
    metrics = _train_and_test(tmp_path, 'mmpose', 'td-hm_hrnetv2-tiny_1xb8-20e_demo-cofw-96x96.py')
    # The mean face in the box scores NME ~0.35 (the faces turn by up to 40 degrees). Measured ~0.065.
    assert chance > 0.25 and metrics['NME'] < 0.4 * chance, (metrics, chance)


@pytest.mark.slow
def test_hand_keypoints_train_above_chance(tmp_path):
    from hrnet_mm.datasets import make_hand_keypoints
    anns = make_hand_keypoints(str(tmp_path / 'data' / 'demo' / 'onehand10k'))
    chance_epe = np.mean([d.mean() for d, _, _ in _mean_shape_errors(anns['train'], anns['test'])])
    # through `mim train mmpose` / `mim test mmpose`, which take the config as they take mmpose's own
    metrics = _train_and_test(tmp_path, 'mmpose', 'td-hm_hrnetv2-tiny_1xb8-20e_demo-onehand10k-96x96.py',
                              use_mim=True)
    # The mean hand in the box is ~12 px off on average (rotations up to 60 degrees, bent fingers). Measured:
    # EPE 2.5 px, PCK@0.2 1.0.
    assert chance_epe > 8 and metrics['EPE'] < 0.5 * chance_epe, (metrics, chance_epe)
    assert metrics['PCK'] > 0.85, metrics
