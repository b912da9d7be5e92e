"""The pose and detection demo configs (configs/demo) train on their synthetic sets through the task library's own
runner and then score clearly above chance with the task's real metric: ``tools/train.py <config>`` (detection:
``mim train mmdet <config> --gpus 0``) in a fresh cwd holding ``data/demo/<name>/``, then ``tools/test.py``
(``mim test``) on the last checkpoint; the pose model then goes on to the int8 deploy model and behind a person
detector. The segmentation and classification demos are trained and scored the same way by the README's
quickstarts (tests/project/test_docs.py). The training loss (mmengine's
``vis_data/scalars.json``) must fall and the test metric (mmengine's ``<timestamp>.json``) must pass a threshold
set far above what a constant or random predictor reaches and well below what the demo reaches."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
from typing import Dict, Sequence

import pytest
from conftest import ROOT, json_lines, training_loss_fell

DEMO = os.path.join(ROOT, 'configs', 'demo')
MIM = os.path.join(os.path.dirname(sys.executable), 'mim')


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    # One OpenMP thread per run: these tiny models gain little from a second thread, and on a busy 2-core machine
    # two threads spin against other processes (measured 0.65 s/iter instead of 0.09 s/iter for the pose demo).
    env['OMP_NUM_THREADS'] = '1'
    env['MKL_NUM_THREADS'] = '1'
    return env


def _mim(cwd, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([MIM, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'mim {" ".join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}'
    return proc


def _tool(cwd, tool: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', tool), *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'{tool} {" ".join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}'
    return proc


def _train_and_test(cwd, pkg: str, config: str, cfg_options: Sequence[str] = (), use_mim: bool = False
                    ) -> Dict[str, object]:
    """Trains, checks that the loss fell, tests the last checkpoint; returns the test metrics."""
    config = os.path.join(DEMO, config)
    options = ['--cfg-options', *cfg_options] if cfg_options else []
    if use_mim:
        _mim(cwd, 'train', pkg, config, '--gpus', '0', '--work-dir', 'work', *options)
    else:
        _tool(cwd, 'train.py', config, '--work-dir', 'work', *options)
    with open(os.path.join(cwd, 'work', 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    assert os.path.isfile(os.path.join(cwd, ckpt)), ckpt

    (scalars,) = glob.glob(os.path.join(cwd, 'work', '*', 'vis_data', 'scalars.json'))
    first, last = training_loss_fell(scalars)

    if use_mim:
        _mim(cwd, 'test', pkg, config, '--checkpoint', ckpt, '--gpus', '0', '--work-dir', 'work_test', *options)
    else:
        _tool(cwd, 'test.py', config, ckpt, '--work-dir', 'work_test', *options)
    (metrics,) = [p for p in glob.glob(os.path.join(cwd, 'work_test', '*', '*.json'))
                  if os.path.basename(p) != 'scalars.json']
    result = json_lines(metrics)[-1]
    print(f'{pkg} {os.path.basename(config)}: loss {first:.4g} -> {last:.4g}; test {result}')
    return result


@pytest.mark.slow
def test_pose_demo_trains_above_chance(tmp_path):
    from hrnet_mm.datasets import make_coco_keypoints
    make_coco_keypoints(str(tmp_path / 'data' / 'demo' / 'coco_keypoints'))
    metrics = _train_and_test(tmp_path, 'mmpose', 'td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py')
    # OKS AP over thresholds 0.5:0.95 with the ground-truth boxes. The figures' limbs are placed at random
    # angles (arms over 115 degrees), so a fixed mean pose misses wrists, elbows and knees by much more than
    # their OKS tolerance (a few pixels at these areas) and scores AP near 0. The demo measures ~0.9.
    assert metrics['coco/AP'] > 0.5, metrics
    _int8_deploy_scores_like_the_checkpoint(tmp_path, metrics['coco/AP'])
    _detector_to_pose(tmp_path)


def _int8_deploy_scores_like_the_checkpoint(cwd, ap: float) -> None:
    """``tools/test.py --deploy int8``: the deploy model calibrated on 32 training images and scored by mmpose's
    evaluator loses at most 0.02 AP (the issue's budget is 1 point on a full set; 8 test images here, whose AP
    moves in steps of about 0.01)."""
    with open(os.path.join(cwd, 'work', 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    proc = _tool(cwd, 'test.py', os.path.join(DEMO, 'td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py'), ckpt,
                 '--work-dir', 'work_int8', '--deploy', 'int8')
    assert 'testing the deploy model in int8 (calibrated on 32 training images)' in proc.stdout + proc.stderr
    (path,) = [p for p in glob.glob(os.path.join(cwd, 'work_int8', '*', '*.json'))
               if os.path.basename(p) != 'scalars.json']
    int8_ap = json_lines(path)[-1]['coco/AP']
    print(f'int8 deploy: AP {int8_ap} (checkpoint {ap})')
    assert int8_ap > ap - 0.02, (int8_ap, ap)


def _detector_to_pose(cwd) -> None:
    """The pose model trained above, behind a person detector trained on multi-person scenes (2-4 figures in
    160x320), through ``tools/infer.py --det-model``: the people and their keypoints of the held-out scenes, scored
    by OKS AP (pycocotools) against the generator's annotations."""
    from hrnet_mm.cli.demo import PEOPLE_DETECTOR, coco_keypoint_ap, compare_keypoint_results, onnx_pipeline
    from hrnet_mm.datasets.__main__ import write
    with open(os.path.join(cwd, 'work', 'last_checkpoint')) as f:
        pose_ckpt = f.read().strip()
    write('coco-people', str(cwd / 'data' / 'demo' / 'coco_people'))
    det_config = os.path.join(DEMO, PEOPLE_DETECTOR + '.py')
    _tool(cwd, 'train.py', det_config, '--work-dir', 'det')
    proc = _tool(cwd, 'infer.py', os.path.join(DEMO, 'td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py'), pose_ckpt,
                 'data/demo/coco_people/val', '--det-model', det_config, '--det-checkpoint', 'det/epoch_8.pth',
                 '--out-dir', 'scenes', '--pred-out', 'scenes/keypoints.json')
    assert '8 image(s) written' in proc.stdout
    ap = coco_keypoint_ap(str(cwd / 'data/demo/coco_people/annotations/person_keypoints_val.json'),
                          str(cwd / 'scenes' / 'keypoints.json'))
    print(f'detector to pose on the scenes: {ap}')
    # 25 people in 8 scenes. Without a detector (the whole scene as one box) at most one person per scene could
    # match, and the pose model would see a squeezed scene: AP near 0. Measured: AP 0.93, AP50 1.0.
    assert ap['detections'] >= 20 and ap['AP50'] > 0.8 and ap['AP'] > 0.5, ap
    # The same pipeline exported to ONNX and run by hrnet_mm_runtime (onnxruntime, no PyTorch): the same people and
    # AP, keypoints equal up to the JSON's rounding (0.001 px). mmpose's decoding moves each maximum a quarter
    # heatmap pixel (1 crop pixel) towards the higher neighbour; where the two neighbours are equal to within
    # onnxruntime's error the direction may differ, so a few keypoints may be a crop pixel (< 2 px here) apart.
    pose_config = os.path.join(DEMO, 'td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py')
    onnx = onnx_pipeline(ROOT, str(cwd / 'det'), det_config, str(cwd / 'det' / 'epoch_8.pth'), pose_config,
                         os.path.join(str(cwd), pose_ckpt), str(cwd / 'data/demo/coco_people/val'))
    diff = compare_keypoint_results(str(cwd / 'scenes' / 'keypoints.json'), onnx['results'])
    onnx_ap = coco_keypoint_ap(str(cwd / 'data/demo/coco_people/annotations/person_keypoints_val.json'),
                               onnx['results'])
    print(f'ONNX pipeline: {diff}, {onnx_ap}')
    assert diff['people_a'] == diff['people_b'] and diff['within_0.01px'] > 0.98, diff
    assert diff['keypoint_px'] < 2 and diff['score'] < 0.01, diff
    assert abs(onnx_ap['AP'] - ap['AP']) < 1e-3, (onnx_ap, ap)


@pytest.mark.slow
def test_detection_demo_trains_above_chance(tmp_path):
    from hrnet_mm.datasets import make_coco_detection
    make_coco_detection(str(tmp_path / 'data' / 'demo' / 'coco'), {'train': 48, 'val': 8})
    # The demo config's own schedule (8 epochs, lr 0.02) on the 48 images that make demo writes.
    metrics = _train_and_test(tmp_path, 'mmdet', 'faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py',
                              ['default_hooks.checkpoint.interval=8'], use_mim=True)
    # Random boxes on 128x160 images with 1-3 objects essentially never reach IoU 0.5 with the right class, so
    # a chance detector has bbox mAP@0.5 ~ 0. Measured (unseeded runs): mAP 0.2-0.5, mAP@0.5 0.5-0.75.
    assert metrics['coco/bbox_mAP_50'] > 0.1, metrics
    assert metrics['coco/bbox_mAP'] > 0.05, metrics
