"""Run any hrnet_mm config on images with its task library's own inferencer and visualizer; write PNG files.

The task library is picked from the config's ``default_scope``, as in ``tools/train.py``:

* ``mmdet``: ``mmdet.apis.DetInferencer`` draws the boxes (and masks, if the model predicts them) scoring at
  least ``--score-thr``;
* ``mmseg``: ``mmseg.apis.MMSegInferencer`` overlays the segmentation map (with class names);
* ``mmpose`` (top-down): ``mmpose.apis.inference_topdown`` with the whole image as the person box, drawn by the
  config's ``PoseLocalVisualizer`` with the dataset meta (skeleton; keypoints scoring below ``--score-thr`` are
  left out);
* ``mmpretrain``: ``mmpretrain.apis.ImageClassificationInferencer``; the ``--topk`` classes with their scores are
  written on the image by mmpretrain's ``UniversalVisualizer``.

Each input ``DIR/name.ext`` gives ``OUT_DIR/name.png`` (``name_1.png``, ... when names repeat), of the same size
as the input image. Nothing is downloaded: the weights come from CHECKPOINT, and text is drawn with OpenCV's or
matplotlib's bundled fonts. User errors (missing config or checkpoint, a checkpoint of another model,
unsupported or uninstalled scope, unreadable image, folder without images, no CUDA) are reported as one line
with exit status 2; ``--debug`` shows the traceback instead.

Examples::

    python tools/infer.py configs/demo/faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py work/epoch_8.pth \\
        data/demo/coco/val --out-dir vis --score-thr 0.5
    python tools/infer.py configs/demo/fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py work/iter_300.pth \\
        a.png b.png --out-dir vis
    python tools/infer.py configs/demo/td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py work/epoch_12.pth \\
        person.jpg --out-dir vis --device cuda
    python tools/infer.py configs/demo/hrnet-tiny_1xb8-6e_demo-imagenet.py work/epoch_6.pth \\
        data/demo/imagenet/val --out-dir vis --topk 3
"""
from __future__ import annotations

import argparse
import contextlib
import os
import os.path as osp
import sys
import warnings
from typing import Any, Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from train import SUPPORTED_SCOPES, ToolError, fail, import_hrnet_mm, load_config  # noqa: E402

PROG = 'infer.py'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def collect_images(inputs: List[str], out_dir: Optional[str] = None) -> List[str]:
    """Expands image files and folders (all images inside, recursively, sorted) into a list of image files.

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


def output_names(images: List[str], out_dir: str) -> List[str]:
    """``OUT_DIR/<stem>.png`` for each image, with ``_1``, ``_2``, ... added where stems repeat."""
    used: Dict[str, int] = {}
    names = []
    for path in images:
        stem = osp.splitext(osp.basename(path))[0]
        count = used.get(stem, 0)
        used[stem] = count + 1
        names.append(osp.join(out_dir, f'{stem}.png' if count == 0 else f'{stem}_{count}.png'))
    return names


def load_state_dict(checkpoint: str) -> Dict[str, Any]:
    """Loads a checkpoint's state dict on CPU (``state_dict`` of an mmengine checkpoint, or a bare state dict).

    Raises:
        ToolError: The file is missing or is not a PyTorch checkpoint.
    """
    from mmengine.runner.checkpoint import _load_checkpoint

    if not osp.isfile(checkpoint):
        raise ToolError(f'checkpoint file not found: {checkpoint}')
    try:
        ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [''])[0]
        raise ToolError(f'cannot load checkpoint {checkpoint}: {type(exc).__name__}: {first_line}') from exc
    if not isinstance(ckpt, dict):
        raise ToolError(f'cannot load checkpoint {checkpoint}: not a state dict')
    state = ckpt.get('state_dict', ckpt)
    return {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}


def check_weights(model: Any, state: Dict[str, Any], checkpoint: str, config: str) -> None:
    """Checks that ``state`` fills every parameter and buffer of ``model`` with the right shapes.

    The inferencers load weights non-strictly (only warnings), so a checkpoint of another model would silently
    give a partly random model; this turns that into an error.

    Raises:
        ToolError: Keys of the model are missing from the checkpoint, or their shapes differ.
    """
    from hrnet_mm.cli.checkpoint_checks import check_state_fits
    from hrnet_mm.cli.errors import UserInputError

    try:
        check_state_fits(model, state, checkpoint, config)
    except UserInputError as exc:
        raise ToolError(str(exc)) from None


class Predictor:
    """Per-library inference and drawing: ``predictor(path) -> RGB uint8 image`` of the input's size."""

    def __init__(self, cfg: Any, scope: str, checkpoint: str, args: argparse.Namespace) -> None:
        state = load_state_dict(checkpoint)
        self.args = args
        build: Dict[str, Callable[[Any, str], Any]] = {
            'mmdet': self._build_det, 'mmseg': self._build_seg, 'mmpose': self._build_pose,
            'mmpretrain': self._build_cls}
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model = build[scope](cfg, checkpoint)
        check_weights(model, state, checkpoint, args.config)
        self.run = {'mmdet': self._run_det, 'mmseg': self._run_seg, 'mmpose': self._run_pose,
                    'mmpretrain': self._run_cls}[scope]

    def __call__(self, path: str) -> np.ndarray:
        return self.run(path)

    # mmdet
    def _build_det(self, cfg: Any, checkpoint: str) -> Any:
        from mmdet.apis import DetInferencer

        self.inferencer = DetInferencer(model=cfg, weights=checkpoint, device=self.args.device, show_progress=False)
        return self.inferencer.model

    def _run_det(self, path: str) -> np.ndarray:
        result = self.inferencer(path, return_vis=True, no_save_vis=True, no_save_pred=True,
                                 pred_score_thr=self.args.score_thr)
        return result['visualization'][0]

    # mmseg
    def _build_seg(self, cfg: Any, checkpoint: str) -> Any:
        from mmseg.apis import MMSegInferencer

        self.inferencer = MMSegInferencer(model=cfg, weights=checkpoint, device=self.args.device)
        self.inferencer.show_progress = False  # one progress bar: ours
        return self.inferencer.model

    def _run_seg(self, path: str) -> np.ndarray:
        vis = self.inferencer(path, return_vis=True, show=False, out_dir='')['visualization']
        return vis[0] if isinstance(vis, list) else vis  # mmseg unpacks the list of a single image

    # mmpose
    def _build_pose(self, cfg: Any, checkpoint: str) -> Any:
        from mmpose.apis import init_model
        from mmpose.registry import VISUALIZERS

        self.model = init_model(cfg, checkpoint, device=self.args.device)
        vis_cfg = cfg.get('visualizer', None) or dict(type='PoseLocalVisualizer')
        vis_cfg = dict(vis_cfg, name=f'hrnet_mm_infer_{id(self)}', vis_backends=None, save_dir=None)
        self.visualizer = VISUALIZERS.build(vis_cfg)
        draw_circles = self.visualizer.draw_circles

        def draw_circles_scalar_radius(center: Any, radius: Any, *args: Any, **kwargs: Any) -> Any:
            # mmpose 1.3.2 passes radius=np.array([r]) and its OpenCV backend calls int() on it, which NumPy 2
            # rejects (TypeError); hand it the scalar.
            if np.size(radius) == 1:
                radius = float(np.asarray(radius).reshape(-1)[0])
            return draw_circles(center, radius, *args, **kwargs)

        self.visualizer.draw_circles = draw_circles_scalar_radius
        self.visualizer.set_dataset_meta(self.model.dataset_meta)
        return self.model

    def _run_pose(self, path: str) -> np.ndarray:
        from mmpose.apis import inference_topdown
        from mmpose.structures import merge_data_samples

        samples = inference_topdown(self.model, path, bboxes=None)  # the whole image is the person box
        img = read_image(path)[..., ::-1]
        self.visualizer.add_datasample('result', img, data_sample=merge_data_samples(samples), draw_gt=False,
                                       draw_bbox=True, draw_heatmap=False, kpt_thr=self.args.score_thr,
                                       show=False)
        return self.visualizer.get_image()

    # mmpretrain
    def _build_cls(self, cfg: Any, checkpoint: str) -> Any:
        from mmpretrain.apis import ImageClassificationInferencer
        from mmpretrain.visualization import UniversalVisualizer

        self.inferencer = ImageClassificationInferencer(model=cfg, pretrained=checkpoint, device=self.args.device)
        self.visualizer = UniversalVisualizer(name=f'hrnet_mm_infer_{id(self)}')
        return self.inferencer.model

    def _run_cls(self, path: str) -> np.ndarray:
        import torch

        # The inferencer's own preprocess and forward, without its __call__'s progress bar (on stdout).
        (sample,) = self.inferencer.forward(next(iter(self.inferencer.preprocess([path]))))
        topk = min(self.args.topk, sample.pred_score.numel())
        sample.set_pred_label(torch.topk(sample.pred_score, topk).indices)
        img = read_image(path)[..., ::-1]
        return self.visualizer.visualize_cls(img, sample, classes=self.inferencer.classes, draw_gt=False,
                                             draw_pred=True, draw_score=True, show=False)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command line of ``tools/infer.py``."""
    parser = argparse.ArgumentParser(prog=PROG, description='Run an hrnet_mm config on images with its task '
                                     'library (' + ', '.join(SUPPORTED_SCOPES) + ', picked by default_scope) and '
                                     'write the drawn predictions as PNG files')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file of that config')
    parser.add_argument('images', nargs='+', help='image files and/or folders (all images inside, recursively)')
    parser.add_argument('--out-dir', required=True, help='folder for the PNG files (created)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu', help='device (default: cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: lowest box score drawn; pose: lowest keypoint score drawn (default 0.3)')
    parser.add_argument('--topk', type=int, default=3, help='classification: classes written (default 3)')
    parser.add_argument('--debug', action='store_true', help='show tracebacks instead of one-line errors')
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error('--topk must be at least 1')
    return args


def run(args: argparse.Namespace) -> List[str]:
    """Runs inference on all images and writes the PNG files.

    Args:
        args: Parsed command line.

    Returns:
        The written files.

    Raises:
        ToolError: A user error (see the module docstring).
    """
    import mmcv
    import torch
    from mmengine.utils import track_iter_progress

    cfg, scope = load_config(args.config)
    if not osp.isfile(args.checkpoint):
        raise ToolError(f'checkpoint file not found: {args.checkpoint}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise ToolError('--device cuda: no CUDA device is available')
    if args.device == 'cpu':  # reuse freed pages between images instead of faulting them in again
        from hrnet_mm.deploy import tune_cpu_allocator
        tune_cpu_allocator()
    images = collect_images(args.images, args.out_dir)
    for path in images:  # fail before building the model
        read_image(path)
    written = []
    # The libraries' messages (checkpoint loading, progress bars) go to stderr: stdout lists the written files.
    with contextlib.redirect_stdout(sys.stderr):
        predictor = Predictor(cfg, scope, args.checkpoint, args)
        os.makedirs(args.out_dir, exist_ok=True)
        for path, out_file in track_iter_progress(list(zip(images, output_names(images, args.out_dir))),
                                                  file=sys.stderr):
            try:
                drawn = predictor(path)
            except ToolError:
                raise
            except Exception as exc:
                if args.debug:
                    raise
                first_line = (str(exc).strip().splitlines() or [''])[0]
                raise ToolError(f'inference failed on {path}: {type(exc).__name__}: {first_line}') from exc
            mmcv.imwrite(np.ascontiguousarray(drawn[..., ::-1]), out_file)
            written.append(out_file)
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
    print(f'{len(written)} image(s) written to {args.out_dir}')


if __name__ == '__main__':
    main()
