"""Run an hrnet_mm model on images and videos with its task library's own inferencer and visualizer.

The model is a weights-table name (``hrnet-mm list``; its published weights are downloaded once, see
``docs/model_zoo.md``) or a config file followed by its checkpoint. The task library is picked from the config's
``default_scope``, and the inferencer comes from :func:`hrnet_mm.get_inferencer`:

* ``mmdet``: ``DetInferencer`` draws the boxes (and masks, if the model predicts them) scoring at least
  ``--score-thr``;
* ``mmseg``: ``MMSegInferencer`` overlays the segmentation map (with class names);
* ``mmpose``: ``Pose2DInferencer``. A top-down model runs on every person that ``--det-model`` finds (default:
  hrnet_mm's Faster R-CNN HRNetV2p-W32 on COCO; ``--det-model whole_image`` takes the whole image as the one
  box); bottom-up models (DEKR, CID, AE) need no detector. All skeletons are drawn with the dataset meta
  (keypoints scoring below ``--score-thr`` left out);
* ``mmpretrain``: ``ImageClassificationInferencer``; the ``--topk`` classes with their scores are written on the
  image by mmpretrain's ``UniversalVisualizer``.

Each input image ``DIR/name.ext`` gives ``OUT_DIR/name.png`` (``name_1.png``, ... when names repeat), of the same
size as the input image; each video (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ...; read with OpenCV) gives
``OUT_DIR/name.mp4`` with every frame drawn, at the input's frame rate, written to a temporary file and renamed
when complete. A progress bar runs on stderr and the frames per second are reported at the end.
``--pred-out FILE.json`` also writes detection and pose predictions in the COCO results format (``image_id`` is
the 1-based position of the image or frame among all inputs, ``file_name`` the image's path or
``VIDEO#FRAME``).

User errors (unknown model name, missing config or checkpoint, a file that is not a checkpoint, a checkpoint of
another model, offline without the weights in the cache, unsupported or uninstalled scope, unreadable image, a
video OpenCV cannot open or decode, folder without images, no CUDA) are reported as one line with exit status 2;
``--debug`` shows the traceback instead.

Examples::

    python tools/infer.py td-hm_hrnet-w32_8xb64-210e_coco-256x192 people.jpg --out-dir vis --pred-out vis/kpts.json
    python tools/infer.py td-hm_hrnet-w32_8xb64-210e_coco-256x192 dance.mp4 --out-dir vis   # vis/dance.mp4
    python tools/infer.py configs/demo/faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py work/epoch_8.pth \\
        data/demo/coco/val --out-dir vis --score-thr 0.5
    python tools/infer.py configs/demo/td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py work/epoch_12.pth \\
        people.jpg --out-dir vis --det-model DET_CONFIG --det-checkpoint det.pth
    python tools/infer.py configs/demo/hrnet-tiny_1xb8-6e_demo-imagenet.py work/epoch_6.pth \\
        data/demo/imagenet/val --out-dir vis --topk 3
"""
from __future__ import annotations

import argparse
import contextlib
import os
import os.path as osp
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from train import SUPPORTED_SCOPES, ToolError, fail, import_hrnet_mm, load_config  # noqa: E402

PROG = 'infer.py'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def collect_images(inputs: List[str], out_dir: Optional[str] = None) -> List[str]:
    """Expands image and video files and folders (all images inside, recursively, sorted) into a list of files.

    Args:
        inputs: Image files and folders from the command line.
        out_dir: Output folder; images under it are skipped (so a rerun does not read its own output).

    Returns:
        The image files, in command-line order.

    Raises:
        ToolError: An input does not exist, or a folder holds no images.
    """
    skip = osp.abspath(out_dir) + os.sep if out_dir else None
    images: List[str] = []
    for item in inputs:
        if osp.isdir(item):
            found = []
            for dirpath, dirnames, filenames in os.walk(item):
                dirnames.sort()
                if skip and (osp.abspath(dirpath) + os.sep).startswith(skip):
                    continue
                found += [osp.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                raise ToolError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in folder {item}')
            images += found
        elif osp.isfile(item):
            images.append(item)
        else:
            raise ToolError(f'image file or folder not found: {item}')
    return images


def read_image(path: str) -> np.ndarray:
    """Reads an image as BGR ``uint8`` with mmcv.

    Args:
        path: Image file.

    Returns:
        The ``(H, W, 3)`` BGR image.

    Raises:
        ToolError: The file cannot be decoded as an image.
    """
    import mmcv

    try:
        img = mmcv.imread(path, channel_order='bgr')
    except Exception as exc:  # mmcv raises on some undecodable files, returns None on others
        raise ToolError(f'cannot read image {path}: {type(exc).__name__}: {exc}') from exc
    if img is None:
        raise ToolError(f'cannot read image {path}: not a readable image file')
    return img


def output_names(images: List[str], out_dir: str, suffix: str = '.png') -> List[str]:
    """``OUT_DIR/<stem><suffix>`` for each input, with ``_1``, ``_2``, ... added where stems repeat."""
    used: Dict[str, int] = {}
    names = []
    for path in images:
        stem = osp.splitext(osp.basename(path))[0]
        count = used.get(stem, 0)
        used[stem] = count + 1
        names.append(osp.join(out_dir, f'{stem}{suffix}' if count == 0 else f'{stem}_{count}{suffix}'))
    return names


def coco_results(prediction: Dict[str, Any], image_id: int, file_name: str, scope: str) -> List[Dict[str, Any]]:
    """One image's predictions in the COCO results format (what ``COCO.loadRes`` reads), ``file_name`` added.

    Args:
        prediction: The inferencer's prediction of the image (``predictions[0]``; for pose, the list of people).
        image_id: The image's id (its 1-based position among the inputs).
        file_name: The image file.
        scope: ``mmdet`` (boxes: ``category_id`` is the class index + 1; instance masks as ``segmentation`` in
            COCO's run-length encoding) or ``mmpose`` (people, ``category_id``
            1, ``keypoints`` as ``[x, y, score] * K``, ``score`` the mean keypoint score times the box score; a
            bottom-up model's people have no box: the box around their keypoints, score 1).
    """
    results = []
    if scope == 'mmdet':
        masks = prediction.get('masks') or [None] * len(prediction['labels'])
        for label, score, (x0, y0, x1, y1), mask in zip(prediction['labels'], prediction['scores'],
                                                        prediction['bboxes'], masks):
            results.append(dict(image_id=image_id, file_name=file_name, category_id=int(label) + 1,
                                bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                                score=round(float(score), 5)))
            if mask is not None:  # mmdet's pred2dict: COCO run-length encoding
                results[-1]['segmentation'] = dict(size=[int(v) for v in mask['size']], counts=str(mask['counts']))
    else:
        for person in prediction:
            kpts, scores = np.asarray(person['keypoints']), np.asarray(person['keypoint_scores'])
            flat = np.concatenate([kpts, scores[:, None]], axis=1).reshape(-1)
            if 'bbox' in person:
                (x0, y0, x1, y1) = person['bbox'][0]
            else:  # bottom-up models give keypoints only: the box around them
                (x0, y0), (x1, y1) = kpts.min(axis=0), kpts.max(axis=0)
            box_score = float(np.ravel(person.get('bbox_score', 1.0))[0])
            results.append(dict(image_id=image_id, file_name=file_name, category_id=1,
                                keypoints=[round(float(v), 3) for v in flat],
                                bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                                score=round(float(scores.mean()) * box_score, 5)))
    return results


class Predictor:
    """Per-library inference and drawing with the library's own inferencer (:func:`hrnet_mm.get_inferencer`):
    ``predictor(bgr) -> (RGB uint8 image of the input's size, prediction)`` for a BGR ``uint8`` image (a file
    read by :func:`read_image` or a video frame)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from hrnet_mm.apis import get_inferencer

        self.args = args
        det = dict(det_model=args.det_model, det_weights=args.det_checkpoint or True,
                   det_cat_ids=args.det_cat_ids) if args.det_model else {}
        self.inferencer = get_inferencer(args.model, args.checkpoint or True, args.device, **det)
        self.scope = self.inferencer.source.scope
        if self.scope == 'mmpretrain':
            from mmpretrain.visualization import UniversalVisualizer
            self.visualizer = UniversalVisualizer(name=f'hrnet_mm_infer_{id(self)}')
        if self.scope == 'mmpose':
            _scalar_radius(self.inferencer.visualizer)
        self.run = {'mmdet': self._run_det, 'mmseg': self._run_seg, 'mmpose': self._run_pose,
                    'mmpretrain': self._run_cls}[self.scope]

    def __call__(self, bgr: np.ndarray) -> Tuple[np.ndarray, Any]:
        return self.run(bgr)

    # mmdet's and mmseg's inferencers predict on an array as BGR but draw it as RGB: predict, then draw the RGB copy.
    def _run_det(self, bgr: np.ndarray) -> Tuple[np.ndarray, Any]:
        inf, thr = self.inferencer, self.args.score_thr
        (sample,) = inf(bgr, return_datasamples=True, no_save_vis=True, no_save_pred=True)['predictions']
        drawn = inf.visualize([np.ascontiguousarray(bgr[..., ::-1])], [sample], return_vis=True, no_save_vis=True,
                              pred_score_thr=thr)[0]
        pred = inf.pred2dict(sample)
        keep = [i for i, s in enumerate(pred['scores']) if s >= thr]
        return drawn, {k: [pred[k][i] for i in keep] for k in ('labels', 'scores', 'bboxes', 'masks') if k in pred}

    def _run_seg(self, bgr: np.ndarray) -> Tuple[np.ndarray, Any]:
        inf = self.inferencer
        sample = inf(bgr, return_datasamples=True, out_dir='')  # mmseg returns the data sample of a single image
        drawn = inf.visualize([np.ascontiguousarray(bgr[..., ::-1])], [sample], return_vis=True, img_out_dir='')
        return drawn[0], None

    def _run_pose(self, bgr: np.ndarray) -> Tuple[np.ndarray, Any]:
        result = next(self.inferencer(bgr, return_vis=True, draw_bbox=True, kpt_thr=self.args.score_thr,
                                      bbox_thr=self.args.bbox_thr, show=False))
        return result['visualization'][0], result['predictions'][0]

    def _run_cls(self, bgr: np.ndarray) -> Tuple[np.ndarray, Any]:
        import torch

        # The inferencer's own preprocess and forward, without its __call__'s progress bar (on stdout).
        (sample,) = self.inferencer.forward(next(iter(self.inferencer.preprocess([bgr]))))
        topk = min(self.args.topk, sample.pred_score.numel())
        sample.set_pred_label(torch.topk(sample.pred_score, topk).indices)
        return self.visualizer.visualize_cls(np.ascontiguousarray(bgr[..., ::-1]), sample,
                                             classes=self.inferencer.classes, draw_gt=False, draw_pred=True,
                                             draw_score=True, show=False), None


def _scalar_radius(visualizer: Any) -> None:
    """mmpose 1.3.2 passes ``radius=np.array([r])`` and its OpenCV backend calls ``int()`` on it, which NumPy 2
    rejects (TypeError); hand it the scalar."""
    draw_circles = visualizer.draw_circles

    def draw_circles_scalar_radius(center: Any, radius: Any, *args: Any, **kwargs: Any) -> Any:
        if np.size(radius) == 1:
            radius = float(np.asarray(radius).reshape(-1)[0])
        return draw_circles(center, radius, *args, **kwargs)

    visualizer.draw_circles = draw_circles_scalar_radius


def split_model_args(args: argparse.Namespace) -> None:
    """``MODEL [CHECKPOINT] INPUTS...``: a config file takes the checkpoint after it (unless ``--checkpoint`` is
    given or the next input is an image or a folder: then the weights table's weights of the config); a name
    takes its published weights."""
    from hrnet_mm.apis.models import is_config_file
    from hrnet_mm_runtime.video import VIDEO_EXTENSIONS

    rest = list(args.inputs)
    first = rest[0] if rest else ''
    if (is_config_file(args.model) or args.model.endswith('.py')) and args.checkpoint is None \
            and not first.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS) and not osp.isdir(first):
        args.checkpoint = rest.pop(0)
    if not rest:
        raise ToolError('no images or folders given (usage: infer.py MODEL [CHECKPOINT] IMAGES... --out-dir DIR)')
    args.inputs = rest


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command line of ``tools/infer.py``."""
    parser = argparse.ArgumentParser(prog=PROG, description='Run an hrnet_mm model (a weights-table name, or a '
                                     'config with its checkpoint) on images with its task library ('
                                     + ', '.join(SUPPORTED_SCOPES) + ') and write the drawn predictions as PNG files')
    parser.add_argument('model', help='model name (`hrnet-mm list`) or config file')
    parser.add_argument('inputs', nargs='+', metavar='[CHECKPOINT] INPUTS',
                        help='for a config: its checkpoint file, then image files, folders (all images inside, '
                             'recursively) and/or video files')
    parser.add_argument('--out-dir', required=True, help='folder for the PNG and MP4 files (created)')
    parser.add_argument('--checkpoint', help='weights file (default: the positional CHECKPOINT, or the published '
                        'weights of a model name)')
    parser.add_argument('--det-model', help='top-down pose: person detector, a model name or an mmdet config '
                        '(default: faster-rcnn_hrnetv2p-w32-1x_coco); "whole_image" to take the whole image as '
                        'the one person box')
    parser.add_argument('--det-checkpoint', help="the detector's weights file (default: a name's published weights)")
    parser.add_argument('--det-cat-ids', type=int, nargs='+', default=None,
                        help="the detector's class indices that are people (default 0)")
    parser.add_argument('--bbox-thr', type=float, default=0.3, help='top-down pose: lowest person box score')
    parser.add_argument('--pred-out', help='detection, pose: also write the predictions as COCO-format results JSON')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu', help='device (default: cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: lowest box score drawn and written to --pred-out; pose: lowest keypoint '
                             'score drawn (default 0.3)')
    parser.add_argument('--topk', type=int, default=3, help='classification: classes written (default 3)')
    parser.add_argument('--debug', action='store_true', help='show tracebacks instead of one-line errors')
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error('--topk must be at least 1')
    return args


def run(args: argparse.Namespace) -> List[str]:
    """Runs inference on all images and writes the PNG files (and ``--pred-out``).

    Args:
        args: Parsed command line.

    Returns:
        The written files.

    Raises:
        ToolError: A user error (see the module docstring).
    """
    import json

    import mmcv
    import torch
    from mmengine.utils import ProgressBar, track_iter_progress

    from hrnet_mm.apis.models import ModelNotFoundError, resolve
    from hrnet_mm.cli.errors import UserInputError
    from hrnet_mm.models.checkpoint import CheckpointMismatchError
    from hrnet_mm_runtime.video import VideoError, VideoWriter, is_video, probe, read_video

    split_model_args(args)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise ToolError('--device cuda: no CUDA device is available')
    inputs = collect_images(args.inputs, args.out_dir)
    videos = {}
    for path in inputs:  # fail before building the model
        try:
            if is_video(path):
                videos[path] = probe(path)
            else:
                read_image(path)
        except (UserInputError, VideoError) as exc:
            raise ToolError(str(exc)) from None
    try:
        if osp.isfile(args.model):
            load_config(args.model)  # a config's read errors and scope, as the other tools report them
        scope = resolve(args.model, pretrained=False).scope
        if args.pred_out and scope not in ('mmdet', 'mmpose'):
            raise ToolError(f'--pred-out: COCO-format results are written for detection and pose models, not {scope}')
        if args.device == 'cpu':  # reuse freed pages between images instead of faulting them in again
            from hrnet_mm.deploy import tune_cpu_allocator
            tune_cpu_allocator()
        # The libraries' messages (checkpoint loading, progress bars) go to stderr: stdout lists the written files.
        with contextlib.redirect_stdout(sys.stderr):
            predictor = Predictor(args)
    except (ModelNotFoundError, CheckpointMismatchError, ValueError) as exc:
        if args.debug:
            raise
        raise ToolError(str(exc)) from None
    os.makedirs(args.out_dir, exist_ok=True)
    written, results, frames, image_id = [], [], 0, 0
    start = time.perf_counter()

    def predict(bgr: np.ndarray, name: str) -> np.ndarray:
        nonlocal image_id
        image_id += 1
        try:
            drawn, pred = predictor(bgr)
        except Exception as exc:
            if args.debug:
                raise
            first_line = (str(exc).strip().splitlines() or [''])[0]
            raise ToolError(f'inference failed on {name}: {type(exc).__name__}: {first_line}') from exc
        if args.pred_out:
            results.extend(coco_results(pred, image_id, name, predictor.scope))
        return np.ascontiguousarray(drawn[..., ::-1])

    with contextlib.redirect_stdout(sys.stderr):
        images = [p for p in inputs if p not in videos]
        for path, out_file in track_iter_progress(list(zip(images, output_names(images, args.out_dir))),
                                                  file=sys.stderr) if images else ():
            mmcv.imwrite(predict(read_image(path), path), out_file)
            written.append(out_file)
            frames += 1
        for path, out_file in zip(inputs, output_names(inputs, args.out_dir, '.mp4')):
            if path not in videos:
                continue
            info = videos[path]
            progress = ProgressBar(info.frames or 0, file=sys.stderr)
            with VideoWriter(out_file, info.fps, info.width, info.height) as video:
                for index, frame in enumerate(read_video(path)):
                    video.write(predict(frame, f'{path}#{index}'))
                    progress.update()
            written.append(out_file)
            frames += video.frames
    seconds = time.perf_counter() - start
    print(f'{frames} frame(s) in {seconds:.1f} s: {frames / max(seconds, 1e-9):.2f} frames/s', file=sys.stderr)
    if args.pred_out:
        tmp = args.pred_out + '.part'
        with open(tmp, 'w') as f:
            json.dump(results, f)
        os.replace(tmp, args.pred_out)
        written.append(args.pred_out)
    return written


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``tools/infer.py``.

    Args:
        argv: Command line without the program name (default ``sys.argv[1:]``).
    """
    args = parse_args(argv)
    import_hrnet_mm()
    try:
        written = run(args)
    except ToolError as exc:
        if args.debug:
            raise
        fail(PROG, str(exc))
    except Exception as exc:  # load errors inside the task library
        if args.debug:
            raise
        first_line = (str(exc).strip().splitlines() or [''])[0]
        fail(PROG, f'{type(exc).__name__}: {first_line} (run with --debug for the traceback)')
    for out_file in written:
        print(out_file)
    images = [f for f in written if f != args.pred_out]
    print(f'{len(images)} image(s) written to {args.out_dir}')


if __name__ == '__main__':
    main()
