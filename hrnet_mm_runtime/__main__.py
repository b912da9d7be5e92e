"""``python -m hrnet_mm_runtime MODEL.onnx INPUTS...``: an exported model on images, without PyTorch.

Writes ``OUT_DIR/<stem>.png`` for each image (boxes, class map, skeletons or the top class drawn on it) and,
with ``--pred-out``, the detection (boxes scoring at least ``--score-thr``, masks in COCO's run-length
encoding) or pose results as COCO results JSON in the format of ``tools/infer.py --pred-out`` (``image_id`` the
image's 1-based position, ``file_name`` its path), so the two can be compared. A top-down pose model runs on
the boxes of ``--det-model`` (an exported person detector), or on the whole image without one; a bottom-up one
(DEKR, CID) finds the people itself. INPUTS are image and video files and folders (every image inside,
recursively, sorted); a video gives ``OUT_DIR/<stem>.mp4`` at its frame rate, its frames named ``PATH#INDEX``
in the JSON (as ``tools/infer.py`` names them). Errors are one line ``hrnet_mm_runtime: error: ...`` with exit
status 2; the JSON file and the videos are written under temporary names and renamed when complete.

Example::

    python -m hrnet_mm_runtime pose.onnx people/ --det-model det.onnx --out-dir vis --pred-out people.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, NoReturn, Optional

import cv2
import numpy as np

from . import drawing
from .boxes import mask_to_rle
from .models import (
    BottomupPoseEstimator,
    Classifier,
    Detector,
    PoseEstimator,
    RuntimeModelError,
    Segmentor,
    TopDownPose,
    load,
)
from .video import VideoError, VideoWriter, is_video, probe, read_video

PROG = 'hrnet_mm_runtime'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


class UsageError(Exception):
    """A user error, reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f'{PROG}: error: {message} (see --help)', file=sys.stderr)
        sys.exit(2)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = _Parser(prog=f'python -m {PROG}', description=__doc__.split('\n\n')[0])
    parser.add_argument('model', help='ONNX file written by tools/deploy/export_onnx.py')
    parser.add_argument('inputs', nargs='+', help='image and video files, folders of images')
    parser.add_argument('--det-model', help='top-down pose: an exported person detector (the whole image without)')
    parser.add_argument('--det-cat-ids', type=int, nargs='+', default=[0], help='pose: detector classes (0)')
    parser.add_argument('--bbox-thr', type=float, default=0.3,
                        help='pose: lowest person box score; bottom-up: lowest person score (0.3)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='lowest box score drawn and written, lowest keypoint score drawn (0.3)')
    parser.add_argument('--out-dir', default='runtime_vis', help='folder of the pictures (runtime_vis)')
    parser.add_argument('--pred-out', help='detection and pose: write COCO results JSON here')
    parser.add_argument('--threads', type=int, help="onnxruntime's intra-op threads (its default without)")
    return parser.parse_args(argv)


def collect_inputs(inputs: List[str]) -> List[str]:
    """Image and video files, and the images inside folders (recursively, sorted)."""
    files: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames.sort()
                found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                raise UsageError(f'no images in folder {item}')
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise UsageError(f'image or video file or folder not found: {item}')
    return files


def coco_results(task: str, result: Dict[str, Any], image_id: int, file_name: str,
                 score_thr: float = 0.0) -> List[Dict[str, Any]]:
    """One image's detections (those scoring at least ``score_thr``, with their masks in COCO's run-length
    encoding) or people as COCO results (the format of ``tools/infer.py --pred-out``)."""
    out = []
    if task == 'detection':
        masks = result.get('masks')
        for i, (label, score, (x0, y0, x1, y1)) in enumerate(zip(result['labels'], result['scores'],
                                                                 result['bboxes'])):
            if score < score_thr:
                continue
            out.append(dict(image_id=image_id, file_name=file_name, category_id=int(label) + 1,
                            bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                            score=round(float(score), 5)))
            if masks is not None:
                out[-1]['segmentation'] = mask_to_rle(masks[i])
    elif task in ('pose', 'bottomup_pose'):
        for kpts, scores, (x0, y0, x1, y1), box_score in zip(result['keypoints'], result['keypoint_scores'],
                                                             result['bboxes'], result['bbox_scores']):
            flat = np.concatenate([kpts, scores[:, None]], axis=1).reshape(-1)
            out.append(dict(image_id=image_id, file_name=file_name, category_id=1,
                            keypoints=[round(float(v), 3) for v in flat],
                            bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                            score=round(float(scores.mean()) * float(box_score), 5)))
    return out


def run(args: argparse.Namespace) -> List[str]:
    inputs = collect_inputs(args.inputs)
    videos = {path: probe(path) for path in inputs if is_video(path)}  # unreadable videos fail before any work
    model = load(args.model, args.threads)
    if args.det_model and not isinstance(model, PoseEstimator):
        what = 'a bottom-up pose model: it finds the people itself' if isinstance(model, BottomupPoseEstimator) \
            else f'a {model.task} model'
        raise UsageError(f'--det-model is for top-down pose models; {args.model} is {what}')
    if args.pred_out and model.task not in ('detection', 'pose', 'bottomup_pose'):
        raise UsageError(f'--pred-out: COCO results are written for detection and pose models, not {model.task}')
    predict = model
    if isinstance(model, PoseEstimator):
        detector = load(args.det_model, args.threads) if args.det_model else None
        if detector is not None and not isinstance(detector, Detector):
            raise UsageError(f'--det-model {args.det_model} is a {detector.task} model, not a detector')
        predict = TopDownPose(detector, model, args.det_cat_ids, args.bbox_thr) if detector else None
    os.makedirs(args.out_dir, exist_ok=True)
    written: List[str] = []
    results: List[Dict[str, Any]] = []
    names: List[str] = []  # the images and frames done, in order
    start = time.perf_counter()

    def annotate(img: np.ndarray, name: str) -> np.ndarray:
        """The picture of one image or frame; its COCO results appended (``image_id``: its position)."""
        if isinstance(model, (PoseEstimator, BottomupPoseEstimator)):
            result = predict(img) if predict is not None else dict(model(img), bbox_scores=np.ones(1, np.float32))
            if isinstance(model, BottomupPoseEstimator):  # as mmpose's Pose2DInferencer filters bottom-up people
                keep = result['bbox_scores'] > args.bbox_thr
                result = {key: value[keep] for key, value in result.items()}
            drawn = drawing.draw_pose(img, result, model.recipe['pose']['skeleton'], args.score_thr)
        else:
            result = predict(img)
            if isinstance(model, Detector):
                drawn = drawing.draw_boxes(img, result, model.classes, args.score_thr)
            elif isinstance(model, Segmentor):
                drawn = drawing.draw_classes(img, result)
            else:
                assert isinstance(model, Classifier)
                drawn = drawing.draw_label(img, result, model.classes)
        names.append(name)
        if args.pred_out:
            results.extend(coco_results(model.task, result, len(names), name, args.score_thr))
        return drawn

    for path in inputs:
        if path in videos:
            continue
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise UsageError(f'cannot read image {path}: not a readable image file')
        out_file = os.path.join(args.out_dir, os.path.splitext(os.path.basename(path))[0] + '.png')
        cv2.imwrite(out_file, annotate(img, path))
        written.append(out_file)
    for path, info in videos.items():
        out_file = os.path.join(args.out_dir, os.path.splitext(os.path.basename(path))[0] + '.mp4')
        with VideoWriter(out_file, info.fps, info.width, info.height) as video:
            for index, frame in enumerate(read_video(path)):
                video.write(annotate(frame, f'{path}#{index}'))
                print(f'\r{path}: frame {index + 1}' + (f' of {info.frames}' if info.frames else ''), end='',
                      file=sys.stderr, flush=True)
        print(file=sys.stderr)
        written.append(out_file)
    seconds = time.perf_counter() - start
    print(f'{len(names)} frame(s) in {seconds:.1f} s: {len(names) / max(seconds, 1e-9):.2f} frames/s',
          file=sys.stderr)
    if args.pred_out:
        tmp = args.pred_out + '.part'
        with open(tmp, 'w') as f:
            json.dump(results, f)
        os.replace(tmp, args.pred_out)
        written.append(args.pred_out)
    return written


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    try:
        written = run(args)
    except (UsageError, RuntimeModelError, VideoError) as exc:
        print(f'{PROG}: error: {exc}', file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(path)


if __name__ == '__main__':
    main()
