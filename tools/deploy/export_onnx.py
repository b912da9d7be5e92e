"""Export an hrnet_mm model to ONNX and check it with onnxruntime: the whole model, or its backbone (and neck).

``--part model`` (the default) exports the whole model up to the head's raw tensors (class logits,
segmentation logits at the input size, pose heatmaps, or Faster R-CNN's proposals with their class logits and
box deltas) with dynamic height and width (and batch, except for a detector: one image per run), and stores
the test pipeline and post-processing in the file for the PyTorch-free runtime, :mod:`hrnet_mm_runtime`, which
turns the raw tensors into boxes, class maps, keypoints and labels. MODEL is a config file or a model name of
``hrnet-mm list``; weights come from CHECKPOINT, or the model-zoo entry of a name, or stay random for a config
without CHECKPOINT. See docs/deployment.md.

``--part backbone`` exports the backbone (one output per returned branch), ``--part backbone+neck`` the backbone
followed by the config's neck (an HRNetV2Neck gives one map, an HRNetV2pNeck the pyramid); their weights come
from CHECKPOINT (a full model's ``backbone.*``/``neck.*`` keys, or a bare backbone state dict).

``--int8`` (whole model) writes the file's int8 form instead: the float32 export is checked as usual, then quantized
by onnxruntime's static quantization in QDQ form (int8 weights per output channel, uint8 activations calibrated on
the first ``--calibration-images`` images of the config's training set, through its pipeline and the model's data
preprocessor, as ``tools/test.py --deploy int8`` calibrates), with the same runtime recipe. onnxruntime (and so
:mod:`hrnet_mm_runtime`) and OpenVINO run it on their int8 kernels.

BN is folded into the convs (unless ``--no-fold-bn``). The file is checked with ``onnx.checker`` and onnxruntime
is compared with PyTorch at the export shape and at every ``--check-sizes`` entry (batch 2; 1 for a detector),
reporting ``max|ort - torch| / max|torch|``; above ``--tolerance`` (1e-4; 5e-4 for a graph with deformable
convolutions, whose samples follow predicted offsets) the tool fails. A detector's
proposals are paired by coordinates first (see :mod:`hrnet_mm.deploy.whole`). One line is printed per step.
User errors (a missing config or checkpoint, an unknown name, a bad shape, a model or pipeline step the runtime
does not reproduce, a failed check) are reported as one line ``export_onnx.py: error: ...`` with a non-zero exit
status, and no file is left behind.

Examples::

    python tools/deploy/export_onnx.py configs/demo/td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py \\
        work/epoch_12.pth --out pose.onnx
    python tools/deploy/export_onnx.py faster-rcnn_hrnetv2p-w32-1x_coco --out det.onnx --shape 800 1216
    python tools/deploy/export_onnx.py configs/demo/td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py \\
        work/epoch_12.pth --out pose-int8.onnx --int8 --calibration-images 32
    python tools/deploy/export_onnx.py configs/segmentation/fcn_hr18_4xb2-80k_cityscapes-512x1024.py \\
        work/iter_80000.pth --out fcn_hr18.onnx --shape 512 1024 --part backbone+neck --check-sizes 97x130
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import warnings
from typing import List, NoReturn, Optional, Tuple

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOOLS, 'analysis'))

import torch  # noqa: E402
from _common import ToolError, build_model, default_shape, fail, load_config, parse_shape  # noqa: E402

from hrnet_mm.deploy.export import (  # noqa: E402
    EXPORTERS,
    MIN_OPSET,
    MIN_SIZE,
    TOLERANCE,
    BackboneWithNeck,
    ExportError,
    export_onnx,
)
from hrnet_mm.deploy.whole import OPSET  # noqa: E402

PROG = 'export_onnx.py'
PARTS = ('model', 'backbone', 'backbone+neck')


class _Parser(argparse.ArgumentParser):
    """Reports usage errors as one line, like the other errors of the tool."""

    def error(self, message: str) -> NoReturn:
        print(f'{PROG}: error: {message} (see --help)', file=sys.stderr)
        sys.exit(2)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = _Parser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('config', metavar='MODEL', help='config file, or a model name for --part model')
    parser.add_argument('checkpoint', nargs='?',
                        help='weights (full model, or bare backbone for --part backbone); without: the zoo weights '
                             'of a name, random for a config')
    parser.add_argument('--out', required=True, help='ONNX file to write')
    parser.add_argument('--shape', type=int, nargs='+', metavar='N',
                        help='export height and width (H or H W); default: the config\'s input size')
    parser.add_argument('--batch', type=int, default=1, help='batch size of the example input (default 1)')
    parser.add_argument('--opset', type=int, help=f'ONNX opset, >= {MIN_OPSET} (default {OPSET} for the model, '
                        f'{MIN_OPSET} for the backbone)')
    parser.add_argument('--part', choices=PARTS, default='model', help='what to export (default: the whole model)')
    parser.add_argument('--exporter', choices=EXPORTERS, default='dynamo',
                        help='torch.onnx exporter: dynamo (needs onnxscript) or the legacy torchscript one')
    parser.add_argument('--check-sizes', nargs='*', default=[], metavar='HxW',
                        help='more input sizes for the onnxruntime check, e.g. 97x130 160x96 (batch 2)')
    parser.add_argument('--tolerance', type=float, default=None,
                        help='largest accepted relative error (default 1e-4; 5e-4 for a whole model with '
                             'deformable convolutions)')
    parser.add_argument('--static', action='store_true', help='fixed input shape instead of dynamic N/H/W')
    parser.add_argument('--no-fold-bn', action='store_true', help='keep BN layers separate')
    parser.add_argument('--no-check', action='store_true', help='skip onnx.checker and the onnxruntime check')
    parser.add_argument('--int8', action='store_true',
                        help='whole model: write the int8 (QDQ) form of the export, calibrated on training images')
    parser.add_argument('--calibration-images', type=int, default=32,
                        help="with --int8: how many images of the config's training set calibrate it (default 32)")
    return parser.parse_args(argv)


def parse_size(text: str) -> Tuple[int, int]:
    """``'97x130'`` -> ``(97, 130)``."""
    parts = text.lower().split('x')
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ToolError(f'--check-sizes takes HxW entries such as 97x130, got {text!r}')
    return int(parts[0]), int(parts[1])


def check_size(h: int, w: int, what: str) -> None:
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ToolError(f'{what} {h}x{w}: height and width must be at least {MIN_SIZE}')


def load_weights(module: torch.nn.Module, checkpoint: str, part: str) -> int:
    """Loads the part's keys of ``checkpoint`` into ``module``; returns the number of tensors loaded.

    Raises:
        ToolError: The file is missing or unreadable, or it does not hold every weight of the part.
    """
    from hrnet_mm.models.checkpoint import match_state_dict, unwrap_state_dict

    if not os.path.isfile(checkpoint):
        raise ToolError(f'checkpoint not found: {checkpoint}')
    from mmengine.runner.checkpoint import _load_checkpoint

    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            state = unwrap_state_dict(_load_checkpoint(checkpoint, map_location='cpu', logger='silent'))
    except Exception as e:  # a truncated or non-PyTorch file, an HTML page, ...
        raise ToolError(f'cannot load checkpoint {checkpoint}: {type(e).__name__}: '
                        f'{(str(e).strip().splitlines() or [""])[0]}')
    if part == 'backbone+neck':
        state = {k: v for k, v in state.items() if k.startswith(('backbone.', 'neck.'))}
    use, report = match_state_dict(module, state)
    errors = [f'{len(report[g])} {g} (e.g. {report[g][0]})' for g in ('missing', 'unexpected', 'shape mismatch')
              if g in report]
    if errors or not use:
        raise ToolError(f'checkpoint {checkpoint} does not fit the {part} of the config: '
                        f'{"; ".join(errors) or "no matching keys"}')
    module.load_state_dict(use, strict=False)
    return len(use)


def select_part(model: torch.nn.Module, part: str, config: str) -> torch.nn.Module:
    backbone = getattr(model, 'backbone', None)
    if backbone is None:
        raise ToolError(f'the model of {config} has no backbone')
    if part == 'backbone':
        return backbone
    neck = getattr(model, 'neck', None)
    if neck is None:
        raise ToolError(f'the model of {config} has no neck; use --part backbone')
    return BackboneWithNeck(backbone, neck)


def run(args: argparse.Namespace) -> None:
    """Builds, loads, exports and checks; prints one line per step.

    Raises:
        ToolError: A user error (see the module docstring).
    """
    if args.part != 'model' and not os.path.isfile(args.config):
        raise ToolError(f'config not found: {args.config}')
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        raise ToolError(f'checkpoint not found: {args.checkpoint}')
    shape = parse_shape(args.shape)
    if shape is not None and min(shape) < 1:
        raise ToolError(f'--shape {shape[0]} {shape[1]}: sizes must be positive')
    if args.batch < 1:
        raise ToolError(f'--batch {args.batch}: must be at least 1')
    if args.opset is not None and args.opset < MIN_OPSET:
        raise ToolError(f'--opset {args.opset}: must be at least {MIN_OPSET}')
    sizes = [parse_size(s) for s in args.check_sizes]
    if args.static and sizes:
        raise ToolError('--check-sizes needs a dynamic export (drop --static)')
    if args.int8 and args.part != 'model':
        raise ToolError('--int8 exports the whole model (--part model)')
    if args.int8 and args.calibration_images < 1:
        raise ToolError(f'--calibration-images {args.calibration_images}: must be at least 1')
    if args.part == 'model':
        return run_model(args, shape, sizes)

    cfg = load_config(args.config)
    h, w = shape if shape is not None else default_shape(cfg)
    check_size(h, w, '--shape')
    for sh, sw in sizes:
        check_size(sh, sw, '--check-sizes')
    print(f'config: {args.config} ({cfg.default_scope})')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = build_model(cfg)
    module = select_part(model, args.part, args.config)
    params = sum(p.numel() for p in module.parameters()) / 1e6
    names = type(module.backbone).__name__ + ' + ' + type(module.neck).__name__ if args.part == 'backbone+neck' \
        else type(module).__name__
    print(f'model: {args.part} = {names}, {params:.2f} M parameters')
    if args.checkpoint is not None:
        count = load_weights(module, args.checkpoint, args.part)
        print(f'weights: {count} tensors from {args.checkpoint}')
    else:
        print('weights: none given, random initialisation')
    conv1 = getattr(getattr(module, 'backbone', module), 'conv1', None)
    channels = getattr(conv1, 'in_channels', 3)
    input_shape = (args.batch, channels, h, w)
    check_shapes = [(2, channels, sh, sw) for sh, sw in sizes]
    start = time.perf_counter()
    try:
        report = export_onnx(module, args.out, input_shape, opset=args.opset or MIN_OPSET, dynamic=not args.static,
                             fold_bn=not args.no_fold_bn, check=not args.no_check, check_shapes=check_shapes,
                             exporter=args.exporter,
                             tolerance=TOLERANCE if args.tolerance is None else args.tolerance, log=print)
    except (ValueError, ExportError) as e:
        raise ToolError(str(e).strip().splitlines()[0])
    outputs = ', '.join('x'.join(map(str, s)) for s in report.output_shapes)
    result = f'max relative error {report.max_error:.2e}' if report.errors else 'not checked'
    print(f'done: {args.out} in {time.perf_counter() - start:.1f} s; outputs at '
          f'{"x".join(map(str, input_shape))}: {outputs}; {result}')


def run_model(args: argparse.Namespace, shape: Optional[Tuple[int, int]], sizes: List[Tuple[int, int]]) -> None:
    """``--part model``: the whole model, through :func:`hrnet_mm.get_model` and
    :func:`hrnet_mm.deploy.whole.export_model`.

    Raises:
        ToolError: A user error (see the module docstring).
    """
    from hrnet_mm.apis.models import ModelNotFoundError, get_model
    from hrnet_mm.deploy.graphs import UnsupportedModelError
    from hrnet_mm.deploy.whole import export_int8, export_model
    from hrnet_mm.models.checkpoint import CheckpointFileError, CheckpointMismatchError

    if args.static:
        raise ToolError('--static: the whole-model export is always dynamic in height and width')
    is_file = os.path.isfile(args.config)
    if is_file:
        load_config(args.config)  # the config's read errors, as the other tools report them
    pretrained = args.checkpoint or (not is_file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model = get_model(args.config, pretrained=pretrained)
    except (ModelNotFoundError, CheckpointFileError, CheckpointMismatchError, ValueError) as e:
        raise ToolError(str(e).strip().splitlines()[0].strip('"'))
    cfg = model.cfg
    h, w = shape if shape is not None else default_shape(cfg)
    check_size(h, w, '--shape')
    for sh, sw in sizes:
        check_size(sh, sw, '--check-sizes')
    params = sum(p.numel() for p in model.parameters()) / 1e6
    weights = args.checkpoint or ('model zoo' if pretrained else 'none given, random initialisation')
    print(f'model: {args.config} ({cfg.default_scope}, {type(model).__name__}, {params:.2f} M parameters); '
          f'weights: {weights}')
    detector = cfg.default_scope == 'mmdet'
    if detector and args.batch != 1:
        raise ToolError(f'--batch {args.batch}: a detector graph takes one image (use --batch 1)')
    input_shape = (args.batch, 3, h, w)
    check_shapes = [(1 if detector else 2, 3, sh, sw) for sh, sw in sizes]
    start = time.perf_counter()
    calibration = calibration_inputs(model, cfg, args) if args.int8 else None  # a missing training set fails early
    with tempfile.TemporaryDirectory(prefix='hrnet_mm_export_') as folder:
        path = os.path.join(folder, 'float32.onnx') if args.int8 else args.out
        try:
            report = export_model(model, cfg, path, input_shape, opset=args.opset or OPSET,
                                  fold_bn=not args.no_fold_bn, check=not args.no_check, check_shapes=check_shapes,
                                  exporter=args.exporter, tolerance=args.tolerance,
                                  config_name=os.path.basename(args.config), log=print)
        except (UnsupportedModelError, ValueError, ExportError) as e:
            raise ToolError(str(e).strip().splitlines()[0])
        if args.int8:
            try:
                export_int8(path, args.out, calibration, log=print)
            except Exception as e:  # noqa: BLE001 - onnxruntime's quantizer raises many types; report the first line
                raise ToolError(f'--int8: quantization failed: {type(e).__name__}: '
                                f'{(str(e).strip().splitlines() or [""])[0]}')
    outputs = ', '.join(f'{n} {"x".join(map(str, s))}' for n, s in zip(report.output_names, report.output_shapes))
    result = f'max relative error {report.max_error:.2e}' if report.errors else 'not checked'
    print(f'done: {args.out}{" (int8)" if args.int8 else ""} in {time.perf_counter() - start:.1f} s; outputs at '
          f'{"x".join(map(str, input_shape))}: {outputs}; float32 file {result}')


def calibration_inputs(model: torch.nn.Module, cfg, args: argparse.Namespace) -> list:
    """``--int8``: the graph inputs of the first ``--calibration-images`` images of the config's training set.

    Raises:
        ToolError: The training images cannot be read.
    """
    from hrnet_mm.deploy.whole import calibration_inputs as read_inputs

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # pycocotools' loading lines
            warnings.simplefilter('ignore')
            items, seen = read_inputs(model, cfg, args.calibration_images)
    except Exception as e:  # noqa: BLE001 - a missing data root, annotation file or image, a config without one
        raise ToolError(f'--int8: cannot read the training images of {args.config} for calibration: '
                        f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0]}')
    print(f'calibration: {seen} training images ({len(items)} inputs)')
    return items


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except ToolError as e:
        fail(PROG, e)


if __name__ == '__main__':
    main()
