"""``make demo``: the project's main job on its embedded default.

Writes the synthetic demo datasets in their real formats (if absent), then for each task trains a small
hrnet_mm model through that task library's runner with ``tools/train.py``, evaluates it with
``tools/test.py`` and the task's real metric, and prints a results table:

* detection: Faster R-CNN + HRNetV2p on COCO-format shapes, COCO bbox mAP;
* segmentation: FCN + HRNetV2 on a Cityscapes-format set, mIoU;
* pose: top-down heatmaps + HRNetV1 on COCO-keypoints-format figures, COCO keypoint AP; then the
  detector-to-pose pipeline: a person detector (Faster R-CNN + HRNetV2p) trained on multi-person scenes finds the
  people, the pose model runs on each box (``tools/infer.py --det-model``), OKS AP against the scenes' annotations;
  both models are then exported to ONNX (``tools/deploy/export_onnx.py``) and the same pipeline runs in
  onnxruntime without PyTorch (``python -m hrnet_mm_runtime``): its people, keypoints and AP beside PyTorch's, and
  pictures of both side by side under ``<work dir>/people/pytorch_vs_onnx/``;
* classification: HRNet + the paper's head on an ImageNet-style folder set, top-1.

It ends by writing, per task, PNGs of the predictions on two held-out images (``tools/infer.py``) and of the
training curves (``tools/analysis/plot_curves.py``) under ``<work dir>/<task>/pictures/`` and printing where.

``python -m hrnet_mm.cli.demo --task seg`` runs one task (``make demo TASK=seg``); ``--smoke`` only builds an
HRNet through each of the four task registries and runs it once (seconds).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from ..registry import build_in_scope
from ..utils import count_macs, count_params

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # through a symlinked install


@dataclass(frozen=True)
class DemoTask:
    """One task of the demo."""

    name: str
    config: str  # start of the file name in configs/demo/ (one file per task)
    data: str  # folder under the data root, and the generator kind of `python -m hrnet_mm.datasets`
    images: str  # glob of held-out images under the data folder, for the prediction pictures
    metric: str  # key printed by the evaluator
    metric_name: str
    chance: str  # what a model that learned nothing would score


TASKS: Dict[str, DemoTask] = {
    'det': DemoTask('detection', 'faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco', 'coco', 'val/*.jpg', 'coco/bbox_mAP',
                    'COCO bbox mAP', '0.0'),
    'seg': DemoTask('segmentation', 'fcn_hrnetv2-tiny_', 'cityscapes', 'leftImg8bit/val/*/*.png', 'mIoU',
                    'mIoU (%)', 'one class everywhere'),
    'pose': DemoTask('pose', 'td-hm_hrnet-tiny_', 'coco_keypoints', 'val/*.jpg', 'coco/AP',
                     'COCO keypoint AP', '0.0'),
    'cls': DemoTask('classification', 'hrnet-tiny_', 'imagenet', 'val/*/*', 'accuracy/top1',
                    'top-1 (%)', '100 / classes'),
}


def _config_path(prefix: str) -> str:
    """The one demo config whose name starts with ``prefix``."""
    for base in (os.path.join(REPO, 'configs', 'demo'),
                 os.path.join(PACKAGE, '.mim', 'configs', 'demo')):
        found = sorted(glob.glob(os.path.join(base, prefix + '*.py')))
        if len(found) > 1:
            raise FileNotFoundError(f'several demo configs start with {prefix}: {found}')
        if found:
            return found[0]
    raise FileNotFoundError(f'no demo config {prefix}*.py under configs/demo')


def _tool(name: str) -> str:
    path = os.path.join(REPO, 'tools', name)
    if not os.path.exists(path):
        raise FileNotFoundError(f'{path} not found: run the demo from a clone of hrnet_mm')
    return path


def _run(cmd: List[str], log_path: str, cwd: str) -> str:
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=cwd)
    with open(log_path) as f:
        text = f.read()
    if proc.returncode != 0:
        tail = '\n'.join(text.splitlines()[-15:])
        raise RuntimeError(f'command failed ({proc.returncode}): {" ".join(cmd)}\nlog: {log_path}\n{tail}')
    return text


def parse_test_metrics(log_text: str) -> Dict[str, float]:
    """The ``key: value`` pairs of the last ``Epoch(test)``/``Iter(test)`` summary line of an mmengine log."""
    lines = [ln for ln in log_text.splitlines() if re.search(r'(Epoch|Iter)\(test\)', ln) and ':' in ln]
    if not lines:
        return {}
    pairs = re.findall(r'([\w/.-]+): (-?[\d.]+(?:e-?\d+)?)', re.split(r'(?:Epoch|Iter)\(test\)', lines[-1])[-1])
    return {k: float(v) for k, v in pairs}


def _loss_curve(work_dir: str) -> List[float]:
    runs = sorted(d for d in os.listdir(work_dir) if re.fullmatch(r'\d{8}_\d{6}', d))
    losses = []
    for run in runs:
        path = os.path.join(work_dir, run, 'vis_data', 'scalars.json')
        if os.path.exists(path):
            with open(path) as f:
                losses += [json.loads(ln)['loss'] for ln in f if '"loss"' in ln]
    return losses


def ensure_data(data_root: str, kinds: List[str]) -> None:
    """Writes the demo datasets that are missing under ``data_root``."""
    for kind in kinds:
        folder = os.path.join(data_root, kind)
        if os.path.isdir(folder) and os.listdir(folder):
            continue
        print(f'[demo] writing {kind} demo data to {folder}', flush=True)
        cli = {'coco': 'coco', 'cityscapes': 'cityscapes', 'coco_keypoints': 'coco-keypoints',
               'imagenet': 'imagenet', 'coco_people': 'coco-people'}[kind]
        from ..datasets.__main__ import main as data_main
        data_main([cli, folder])


def run_task(key: str, root: str, work_root: str) -> Dict[str, object]:
    """Trains and evaluates one demo task in ``root`` (whose ``data/demo/<kind>/`` the configs read); returns
    its row of the results table."""
    task = TASKS[key]
    cfg = _config_path(task.config)
    work_dir = os.path.abspath(os.path.join(work_root, key))
    os.makedirs(work_dir, exist_ok=True)
    t0 = time.time()
    print(f'[demo] {task.name}: training {os.path.basename(cfg)} (log: {work_dir}/train.log)', flush=True)
    _run([sys.executable, _tool('train.py'), cfg, '--work-dir', work_dir], os.path.join(work_dir, 'train.log'), root)
    train_s = time.time() - t0
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    print(f'[demo] {task.name}: trained in {train_s:.0f}s; evaluating {os.path.basename(ckpt)} '
          f'(log: {work_dir}/test.log)', flush=True)
    text = _run([sys.executable, _tool('test.py'), cfg, ckpt, '--work-dir', work_dir],
                os.path.join(work_dir, 'test.log'), root)
    metrics = parse_test_metrics(text)
    losses = _loss_curve(work_dir)
    print(f'[demo] {task.name}: {task.metric_name} {metrics.get(task.metric, "n/a")}; drawing predictions and '
          'training curves', flush=True)
    pictures = _pictures(task, cfg, ckpt, root, work_dir)
    return dict(task=task.name, config=os.path.basename(cfg), train_s=train_s, loss_first=losses[0] if losses else None,
                loss_last=losses[-1] if losses else None, metric=task.metric_name,
                value=metrics.get(task.metric), chance=task.chance, checkpoint=ckpt, pictures=pictures)


def _pictures(task: DemoTask, cfg: str, ckpt: str, root: str, work_dir: str) -> List[str]:
    """PNGs of the predictions on two held-out images and of the training curves; returns their paths."""
    images = sorted(glob.glob(os.path.join(root, 'data', 'demo', task.data, task.images)))[:2]
    out_dir = os.path.join(work_dir, 'pictures')
    whole = ['--det-model', 'whole_image'] if task.name == 'pose' else []  # the demo's images are crops
    _run([sys.executable, _tool('infer.py'), cfg, ckpt, *images, '--out-dir', out_dir, *whole],
         os.path.join(work_dir, 'infer.log'), root)
    curves = os.path.join(out_dir, 'training_curves.png')
    _run([sys.executable, _tool(os.path.join('analysis', 'plot_curves.py')), work_dir, '--out', curves],
         os.path.join(work_dir, 'plot_curves.log'), root)
    return sorted(glob.glob(os.path.join(out_dir, '*.png')))


# ------------------------------------------------------------------------------------- detector to pose
PEOPLE_DETECTOR = 'faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-people'


def coco_keypoint_ap(gt_file: str, results_file: str) -> Dict[str, float]:
    """OKS AP of COCO keypoint results (``tools/infer.py --pred-out``) against a COCO keypoints annotation file,
    by pycocotools' ``COCOeval``; the results' ``file_name`` (an image path) names the annotated image.

    Returns:
        ``{'AP': AP over OKS 0.50:0.95, 'AP50': AP at OKS 0.5, 'detections': number of people found}``.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_file)
        ids = {img['file_name']: img['id'] for img in gt.dataset['images']}
        with open(results_file) as f:
            results = json.load(f)
        for r in results:
            r['image_id'] = ids[os.path.basename(r['file_name'])]
        if not results:
            return dict(AP=0.0, AP50=0.0, detections=0)
        evaluator = COCOeval(gt, gt.loadRes(results), 'keypoints')
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(AP=float(evaluator.stats[0]), AP50=float(evaluator.stats[1]), detections=len(results))


def compare_keypoint_results(file_a: str, file_b: str) -> Dict[str, float]:
    """Two COCO keypoint results files of the same images (``tools/infer.py`` and ``python -m hrnet_mm_runtime``
    ``--pred-out``), people matched in order per image.

    Returns:
        ``{'people_a', 'people_b', 'keypoint_px', 'within_0.01px', 'score'}``: the two people counts, the largest
        keypoint distance (pixels, per coordinate), the share of keypoints within 0.01 px and the largest keypoint
        score difference over the matched people (``inf`` and 0 when the counts differ in some image).
    """
    def by_image(path: str) -> Dict[str, List[np.ndarray]]:
        with open(path) as f:
            results = json.load(f)
        out: Dict[str, List[np.ndarray]] = {}
        for r in results:
            out.setdefault(os.path.basename(r['file_name']), []).append(np.reshape(r['keypoints'], (-1, 3)))
        return out

    a, b = by_image(file_a), by_image(file_b)
    px, score, close, total = 0.0, 0.0, 0, 0
    for name in set(a) | set(b):
        people_a, people_b = a.get(name, []), b.get(name, [])
        if len(people_a) != len(people_b):
            px = score = float('inf')
            continue
        for ka, kb in zip(people_a, people_b):
            dist = np.abs(ka[:, :2] - kb[:, :2]).max(axis=1)
            px = max(px, float(dist.max()))
            close, total = close + int((dist < 0.01).sum()), total + len(dist)
            score = max(score, float(np.abs(ka[:, 2] - kb[:, 2]).max()))
    return {'people_a': sum(map(len, a.values())), 'people_b': sum(map(len, b.values())), 'keypoint_px': px,
            'within_0.01px': close / max(total, 1) if px != float('inf') else 0.0, 'score': score}


def onnx_pipeline(root: str, work_dir: str, det_cfg: str, det_ckpt: str, pose_cfg: str, pose_ckpt: str,
                  images: str) -> Dict[str, str]:
    """The detector-to-pose pipeline exported: both models through ``tools/deploy/export_onnx.py``, then
    ``python -m hrnet_mm_runtime`` (onnxruntime, no PyTorch) on ``images``.

    Returns:
        ``{'results': COCO keypoint results file, 'pictures': folder of the drawn images}``.
    """
    out = os.path.join(work_dir, 'onnx')
    os.makedirs(out, exist_ok=True)
    det_onnx, pose_onnx = os.path.join(out, 'people_detector.onnx'), os.path.join(out, 'pose.onnx')
    export = [sys.executable, _tool(os.path.join('deploy', 'export_onnx.py')), '--exporter', 'torchscript']  # 1 s
    _run(export + [det_cfg, det_ckpt, '--out', det_onnx], os.path.join(out, 'export_detector.log'), root)
    _run(export + [pose_cfg, pose_ckpt, '--out', pose_onnx], os.path.join(out, 'export_pose.log'), root)
    results, pictures = os.path.join(out, 'keypoints_val.json'), os.path.join(out, 'pictures')
    _run([sys.executable, '-m', 'hrnet_mm_runtime', pose_onnx, images, '--det-model', det_onnx, '--out-dir',
          pictures, '--pred-out', results], os.path.join(out, 'runtime.log'), root)
    return dict(results=results, pictures=pictures)


def side_by_side(left_dir: str, right_dir: str, out_dir: str) -> List[str]:
    """``out_dir/<name>.png``: each picture of ``left_dir`` with the same-named one of ``right_dir`` to its
    right."""
    import cv2

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for left in sorted(glob.glob(os.path.join(left_dir, '*.png'))):
        right = os.path.join(right_dir, os.path.basename(left))
        a, b = cv2.imread(left), cv2.imread(right)
        if a is None or b is None or a.shape != b.shape:
            continue
        path = os.path.join(out_dir, os.path.basename(left))
        cv2.imwrite(path, cv2.hconcat([a, b]))
        written.append(path)
    return written


def run_people(root: str, work_root: str, pose_row: Dict[str, object]) -> Dict[str, object]:
    """The detector-to-pose pipeline on multi-person scenes: trains the demo person detector on
    ``data/demo/coco_people``, runs ``tools/infer.py`` with the pose demo model on every box it finds in the
    held-out scenes, and scores the keypoints with OKS AP against the generator's annotations."""
    cfg = _config_path(PEOPLE_DETECTOR)
    work_dir = os.path.abspath(os.path.join(work_root, 'people'))
    os.makedirs(work_dir, exist_ok=True)
    t0 = time.time()
    print(f'[demo] pose with a detector: training the person detector {os.path.basename(cfg)} '
          f'(log: {work_dir}/train.log)', flush=True)
    _run([sys.executable, _tool('train.py'), cfg, '--work-dir', work_dir], os.path.join(work_dir, 'train.log'), root)
    train_s = time.time() - t0
    with open(os.path.join(work_dir, 'last_checkpoint')) as f:
        det_ckpt = f.read().strip()
    data = os.path.join(root, 'data', 'demo', 'coco_people')
    out_dir, results = os.path.join(work_dir, 'pictures'), os.path.join(work_dir, 'keypoints_val.json')
    print(f'[demo] pose with a detector: finding the people of {data}/val and their keypoints '
          f'(log: {work_dir}/infer.log)', flush=True)
    _run([sys.executable, _tool('infer.py'), _config_path(TASKS['pose'].config), str(pose_row['checkpoint']),
          os.path.join(data, 'val'), '--det-model', cfg, '--det-checkpoint', det_ckpt, '--out-dir', out_dir,
          '--pred-out', results], os.path.join(work_dir, 'infer.log'), root)
    gt = os.path.join(data, 'annotations', 'person_keypoints_val.json')
    ap = coco_keypoint_ap(gt, results)
    print(f'[demo] pose with a detector: both models exported to ONNX and run by hrnet_mm_runtime (onnxruntime, '
          f'no PyTorch) on the same scenes (logs: {work_dir}/onnx)', flush=True)
    onnx = onnx_pipeline(root, work_dir, cfg, det_ckpt, _config_path(TASKS['pose'].config),
                         str(pose_row['checkpoint']), os.path.join(data, 'val'))
    onnx_ap = coco_keypoint_ap(gt, onnx['results'])
    diff = compare_keypoint_results(results, onnx['results'])
    pairs = side_by_side(out_dir, onnx['pictures'], os.path.join(work_dir, 'pytorch_vs_onnx'))
    print(f'[demo] pose with a detector: PyTorch {diff["people_a"]} people, AP {ap["AP"]:.3f}; ONNX runtime '
          f'{diff["people_b"]} people, AP {onnx_ap["AP"]:.3f}; {100 * diff["within_0.01px"]:.1f}% of the keypoints '
          f'within 0.01 px, all within {diff["keypoint_px"]:.3f} px', flush=True)
    losses = _loss_curve(work_dir)
    return dict(task='pose+detector', config=os.path.basename(cfg), train_s=train_s,
                loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None,
                metric='scene keypoint AP', value=ap['AP'], chance='0.0', checkpoint=det_ckpt, onnx_ap=onnx_ap['AP'],
                onnx_keypoint_px=diff['keypoint_px'],
                pictures=pairs[:3] or sorted(glob.glob(os.path.join(out_dir, '*.png')))[:3])


def format_table(rows: List[Dict[str, object]]) -> List[str]:
    head = f'{"task":<15} {"train":>7} {"loss first -> last":>20}  {"metric":<18} {"value":>7}  chance'
    lines = [head, '-' * len(head)]
    for r in rows:
        loss = (f'{r["loss_first"]:.3f} -> {r["loss_last"]:.3f}' if r['loss_first'] is not None else 'n/a')
        value = f'{r["value"]:.3f}' if isinstance(r['value'], float) else 'n/a'
        lines.append(f'{r["task"]:<15} {r["train_s"]:>6.0f}s {loss:>20}  {r["metric"]:<18} {value:>7}  {r["chance"]}')
    return lines


# ------------------------------------------------------------------------------------------------ smoke
SMOKE = {
    'mmdet': ('HRNetV2p pyramid (detection)',
              [dict(type='hrnet_mm.HRNet', arch='{arch}'),
               dict(type='hrnet_mm.HRNetV2pNeck', in_channels='{arch}', out_channels=256, num_outs=5)]),
    'mmseg': ('HRNetV2 concat + 1x1 mix (segmentation)',
              [dict(type='hrnet_mm.HRNet', arch='{arch}', upsample_cfg=dict(mode='bilinear')),
               dict(type='hrnet_mm.HRNetV2Neck', in_channels='{arch}', out_channels=-1)]),
    'mmpose': ('HRNetV1 high-resolution map (pose)',
               [dict(type='hrnet_mm.HRNet', arch='{arch}', out_indices=(0,))]),
    'mmpretrain': ('classification head (ImageNet)',
                   [dict(type='hrnet_mm.HRNet', arch='{arch}'),
                    dict(type='hrnet_mm.HRFuseScales', in_channels='{arch}')]),
}


def _fill(cfg: dict, arch: str) -> dict:
    out = {k: (v.format(arch=arch) if isinstance(v, str) else v) for k, v in cfg.items()}
    if out.get('out_channels') == -1:  # the HRNetV2 mix keeps the 15C concatenation width
        from ..models import branch_channels
        out['out_channels'] = sum(branch_channels(arch))
    return out


def smoke(arch: str = 'w18', size: int = 128) -> List[str]:
    """Builds and runs each task's representation through its library's registry; returns printed lines."""
    lines = [f'hrnet_mm smoke run: {arch}, input 1x3x{size}x{size}, CPU threads {torch.get_num_threads()}']
    header = f'{"library":<11} {"built":<44} {"params":>11} {"GFLOPs":>7} {"ms":>7}  outputs'
    lines += [header, '-' * len(header)]
    x = torch.randn(1, 3, size, size)
    for lib, (what, cfgs) in SMOKE.items():
        modules = [build_in_scope(lib, _fill(c, arch)).eval() for c in cfgs]
        model = torch.nn.Sequential(*modules)
        times = []
        with torch.no_grad():
            for _ in range(3):  # the first call pays one-off kernel set-up: report the best of three
                t0 = time.perf_counter()
                outs = model(x)
                times.append(time.perf_counter() - t0)
        gflops = count_macs(model, (3, size, size))['total'] / 2 ** 30
        classes = [getattr(type(m), 'plain', type(m)) for m in modules]  # the architecture, not the CPU kernels'
        names = ' + '.join(f'{c.__module__.split(".")[0]}.{c.__name__}' for c in classes)
        shapes = ', '.join('x'.join(map(str, o.shape[1:])) for o in outs)
        lines.append(f'{lib:<11} {names:<44} {count_params(model):>11,} {gflops:>7.2f} {min(times) * 1e3:>7.1f}  '
                     f'{shapes}')
        lines.append(f'{"":<11} ({what})')
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m hrnet_mm.cli.demo', description=__doc__.splitlines()[0])
    parser.add_argument('--task', default=os.environ.get('TASK') or 'all', choices=['all', *TASKS],
                        help='one task or all (default; env TASK)')
    parser.add_argument('--root', default='.', help='folder whose data/demo/ holds the demo data (default: cwd)')
    parser.add_argument('--work-dir', default='work_dirs/demo', help='checkpoints and logs (default work_dirs/demo)')
    parser.add_argument('--smoke', action='store_true', help='only build and run each task\'s model once')
    parser.add_argument('--arch', default='w18', help='backbone preset of the smoke run (default w18)')
    args = parser.parse_args(argv)
    if args.smoke:
        print('\n'.join(smoke(args.arch)))
        return 0
    keys = list(TASKS) if args.task == 'all' else [args.task]
    t0 = time.time()
    ensure_data(os.path.join(args.root, 'data', 'demo'),
                [TASKS[k].data for k in keys] + (['coco_people'] if 'pose' in keys else []))
    rows = []
    for key in keys:
        try:
            rows.append(run_task(key, args.root, args.work_dir))
            if key == 'pose':
                rows.append(run_people(args.root, args.work_dir, rows[-1]))
        except (RuntimeError, FileNotFoundError, ValueError) as exc:
            print(f'[demo] {TASKS[key].name} failed: {exc}', file=sys.stderr)
            return 1
    print(f'\nhrnet_mm demo results ({time.time() - t0:.0f}s in all; checkpoints and logs under {args.work_dir})')
    print('\n'.join(format_table(rows)))
    for r in rows:
        print(f'{r["task"]}: predictions and training curves: {", ".join(r["pictures"])}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
