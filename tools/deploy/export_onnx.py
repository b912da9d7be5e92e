"""Export the HRNet backbone (and neck) of any hrnet_mm config to ONNX and check it with onnxruntime.

The model is built from the config in its task library's scope (as ``tools/analysis`` does: SyncBN becomes
BN, nothing is downloaded), weights come from CHECKPOINT (a full model's ``backbone.*``/``neck.*`` keys, or a
bare backbone state dict) or stay randomly initialised without one. ``--part backbone`` exports the backbone
(one output per returned branch), ``--part backbone+neck`` the backbone followed by the config's neck (an
HRNetV2Neck gives one map, an HRNetV2pNeck the pyramid). The heads are not exported.

The file has dynamic batch, height and width (unless ``--static``); BN is folded into the convs (unless
``--no-fold-bn``). It is checked with ``onnx.checker`` and onnxruntime is compared with PyTorch at the export
shape and at every ``--check-sizes`` entry (batch 2), reporting ``max|ort - torch| / max|torch|``; above
``--tolerance`` (1e-4) the tool fails. One line is printed per step. User errors (missing config or checkpoint,
a bad shape, a config without neck for ``--part backbone+neck``, a failed check) are reported as one line
``export_onnx.py: error: ...`` with a non-zero exit status.

Examples::

    python tools/deploy/export_onnx.py configs/segmentation/fcn_hr18_4xb2-80k_cityscapes-512x1024.py \\
        work/iter_80000.pth --out fcn_hr18.onnx --shape 512 1024 --part backbone+neck --check-sizes 97x130
    python tools/deploy/export_onnx.py configs/demo/td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py \\
        --out pose.onnx --shape 128 96 --exporter torchscript
"""
from __future__ import annotations

import argparse
import os
import sys
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
    BackboneWithNeck,
    ExportError,
    export_onnx,
)

PROG = 'export_onnx.py'
PARTS = ('backbone', 'backbone+neck')


class _Parser(argparse.ArgumentParser):
    """Reports usage errors as one line, like the other errors of the tool."""

    def error(self, message: str) -> NoReturn:
        print(f'{PROG}: error: {message} (see --help)', file=sys.stderr)
        sys.exit(2)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = _Parser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='hrnet_mm config file')
    parser.add_argument('checkpoint', nargs='?', help='weights (full model or bare backbone); random without')
    parser.add_argument('--out', required=True, help='ONNX file to write')
    parser.add_argument('--shape', type=int, nargs='+', metavar='N',
                        help='export height and width (H or H W); default: the config\'s input size')
    parser.add_argument('--batch', type=int, default=1, help='batch size of the example input (default 1)')
    parser.add_argument('--opset', type=int, default=MIN_OPSET, help=f'ONNX opset, >= {MIN_OPSET} (default 17)')
    parser.add_argument('--part', choices=PARTS, default='backbone', help='what to export (default backbone)')
    parser.add_argument('--exporter', choices=EXPORTERS, default='dynamo',
                        help='torch.onnx exporter: dynamo (needs onnxscript) or the legacy torchscript one')
    parser.add_argument('--check-sizes', nargs='*', default=[], metavar='HxW',
                        help='more input sizes for the onnxruntime check, e.g. 97x130 160x96 (batch 2)')
    parser.add_argument('--tolerance', type=float, default=1e-4, help='largest accepted relative error')
    parser.add_argument('--static', action='store_true', help='fixed input shape instead of dynamic N/H/W')
    parser.add_argument('--no-fold-bn', action='store_true', help='keep BN layers separate')
    parser.add_argument('--no-check', action='store_true', help='skip onnx.checker and the onnxruntime check')
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
    if not os.path.isfile(args.config):
        raise ToolError(f'config not found: {args.config}')
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        raise ToolError(f'checkpoint not found: {args.checkpoint}')
    shape = parse_shape(args.shape)
    if shape is not None and min(shape) < 1:
        raise ToolError(f'--shape {shape[0]} {shape[1]}: sizes must be positive')
    if args.batch < 1:
        raise ToolError(f'--batch {args.batch}: must be at least 1')
    if args.opset < MIN_OPSET:
        raise ToolError(f'--opset {args.opset}: must be at least {MIN_OPSET}')
    sizes = [parse_size(s) for s in args.check_sizes]
    if args.static and sizes:
        raise ToolError('--check-sizes needs a dynamic export (drop --static)')

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
        report = export_onnx(module, args.out, input_shape, opset=args.opset, dynamic=not args.static,
                             fold_bn=not args.no_fold_bn, check=not args.no_check, check_shapes=check_shapes,
                             exporter=args.exporter, tolerance=args.tolerance, log=print)
    except (ValueError, ExportError) as e:
        raise ToolError(str(e).strip().splitlines()[0])
    outputs = ', '.join('x'.join(map(str, s)) for s in report.output_shapes)
    result = f'max relative error {report.max_error:.2e}' if report.errors else 'not checked'
    print(f'done: {args.out} in {time.perf_counter() - start:.1f} s; outputs at '
          f'{"x".join(map(str, input_shape))}: {outputs}; {result}')


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except ToolError as e:
        fail(PROG, e)


if __name__ == '__main__':
    main()
