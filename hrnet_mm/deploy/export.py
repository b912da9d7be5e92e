"""Export of HRNet backbones and necks for deployment: ONNX (run by onnxruntime), TorchScript and torch.compile.

* :func:`export_onnx` writes an ONNX file (opset 17 by default) of a backbone, or of a backbone and its neck
  (:class:`BackboneWithNeck`), with dynamic batch, height and width by default, and checks it: the file passes
  ``onnx.checker`` and onnxruntime reproduces PyTorch within ``tolerance`` (``max|ort - torch| / max|torch|``
  over every output) at the export size and at any other size given, odd ones included. The upsampling of
  the fusions resizes to the exact size of the target branch, and the exported graph computes those sizes
  from the input, so one file serves every input size.
* :func:`check_onnx` compares an ONNX file with the PyTorch model on given inputs.
* :func:`script` compiles a model with ``torch.jit.script``. The backbone, the HRNetV2/HRNetV2p necks and the
  classification head compile directly (same state-dict keys, bit-identical outputs); scripted modules
  return lists where the eager ones return tuples.
* ``torch.compile(backbone, fullgraph=True)`` needs nothing from this module: the forward has no graph break.

Two exporters are supported: ``'dynamo'`` (``torch.onnx.export(..., dynamo=True)``, the default of PyTorch
>= 2.9; needs the ``onnxscript`` package) and ``'torchscript'`` (the legacy exporter, ``dynamo=False``, faster
to run and without extra dependency). Both give the same accuracy.

Example::

    from hrnet_mm.deploy.export import BackboneWithNeck, export_onnx
    report = export_onnx(BackboneWithNeck(backbone, neck), 'hrnet.onnx', input_shape=(1, 3, 512, 512),
                         check_shapes=[(2, 3, 97, 130)])
    print(report.errors)   # {(1, 3, 512, 512): 1.1e-06, (2, 3, 97, 130): 1.3e-06}
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

EXPORTERS = ('dynamo', 'torchscript')
MIN_OPSET = 17
TOLERANCE = 1e-4  # the check's default: largest accepted max|ort - torch| / max|torch|
MIN_SIZE = 32  # the smallest input height/width an HRNet accepts (the stride-32 branch is then 1 pixel)

Shape = Tuple[int, ...]


class ExportError(RuntimeError):
    """The export failed, or the exported file does not reproduce PyTorch within the tolerance."""


class BackboneWithNeck(nn.Module):
    """``neck(backbone(x))`` as one module, for export. Keys are ``backbone.*`` and ``neck.*``, as in the
    mmdet/mmseg/mmpose models, so their checkpoints load into it (without the heads' keys)."""

    def __init__(self, backbone: nn.Module, neck: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, x: torch.Tensor):
        """The neck's outputs for an ``(N, C, H, W)`` image batch."""
        return self.neck(self.backbone(x))


@dataclass
class OnnxReport:
    """What :func:`export_onnx` did.

    Attributes:
        path: The ONNX file.
        exporter: ``'dynamo'`` or ``'torchscript'``.
        opset: ONNX opset of the file.
        input_shape: Shape of the example input used for the export.
        dynamic: Whether batch, height and width are dynamic in the file.
        folded_bn: Number of conv+BN pairs folded before the export.
        input_names: Name of the graph input (one).
        output_names: Names of the graph outputs, in the order of the model's outputs.
        output_shapes: Shapes of the outputs at ``input_shape``.
        export_seconds: Time taken by the exporter.
        errors: ``{input shape: max relative error of onnxruntime vs PyTorch}`` (empty without a check).
        tolerance: The largest relative error accepted by the check.
    """

    path: str
    exporter: str
    opset: int
    input_shape: Shape
    dynamic: bool
    folded_bn: int
    input_names: List[str]
    output_names: List[str]
    output_shapes: List[Shape]
    export_seconds: float
    errors: Dict[Shape, float] = field(default_factory=dict)
    tolerance: float = TOLERANCE

    @property
    def max_error(self) -> float:
        """The largest relative error over all checked inputs (0 without a check)."""
        return max(self.errors.values(), default=0.0)

    @property
    def passed(self) -> bool:
        """Whether every checked input stayed within the tolerance."""
        return self.max_error <= self.tolerance


def _outputs(out) -> List[torch.Tensor]:
    """The model's output as a flat list of tensors (a tensor, or a tuple/list of tensors)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    raise ExportError(f'the model must return a tensor or a tuple/list of tensors, got {type(out).__name__}')


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max|b|``: the error of ``a`` relative to the scale of the reference ``b``."""
    if tuple(a.shape) != tuple(b.shape):
        raise ExportError(f'output shapes differ: {tuple(a.shape)} vs reference {tuple(b.shape)}')
    diff = (a.double() - b.double()).abs().max()
    return (diff / b.double().abs().max().clamp_min(1e-12)).item()


def prepare(model: nn.Module, fold_bn: bool = True) -> Tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` without gradients, BN folded into the convs when ``fold_bn``.

    Returns:
        The copy and the number of folded conv+BN pairs.
    """
    from ..ops.convert import revert_cpu_kernels
    from .fold import fold_batchnorm

    m = revert_cpu_kernels(copy.deepcopy(model).eval())
    for p in m.parameters():
        p.requires_grad_(False)
    return m, (fold_batchnorm(m) if fold_bn else 0)


def _check_shape(shape: Sequence[int]) -> Shape:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f'input shape must be (N, C, H, W) with N, C >= 1, got {shape}')
    if min(shape[2:]) < MIN_SIZE:
        raise ValueError(f'input height and width must be at least {MIN_SIZE}, got {shape[2]}x{shape[3]}')
    return shape


def _random_input(shape: Shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def _quiet():
    """Silences the exporters' deprecation warnings, progress lines and opset conversion notes."""
    loggers = [logging.getLogger(name) for name in ('torch.onnx', 'onnxscript', 'torch.export')]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter('ignore')
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(model: nn.Module, x: torch.Tensor, path: str, opset: int, dynamic: bool, exporter: str,
            input_name: str, output_names: List[str]) -> None:
    if exporter == 'dynamo':
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise ExportError("the 'dynamo' exporter needs the onnxscript package (pip install onnxscript); "
                              "or use exporter='torchscript'") from None
        from torch.export import Dim
        shapes = ({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},) if dynamic else None
        torch.onnx.export(model, (x,), path, dynamo=True, opset_version=opset, input_names=[input_name],
                          output_names=output_names, dynamic_shapes=shapes, verbose=False,
                          external_data=False)  # one self-contained file (HRNets are far below 2 GiB)
    else:
        axes = None
        if dynamic:
            axes = {input_name: {0: 'batch', 2: 'height', 3: 'width'}}
            axes.update({name: {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'} for name in output_names})
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=opset, input_names=[input_name],
                          output_names=output_names, dynamic_axes=axes, do_constant_folding=True)


def export_onnx(model: nn.Module, path: str, input_shape: Sequence[int] = (1, 3, 224, 224), opset: int = MIN_OPSET,
                dynamic: bool = True, fold_bn: bool = True, check: bool = True,
                check_shapes: Sequence[Sequence[int]] = (), exporter: str = 'dynamo', tolerance: float = TOLERANCE,
                input_name: str = 'input', log: Optional[Callable[[str], None]] = None) -> OnnxReport:
    """Exports ``model`` (image batch in, a tensor or tuple of tensors out) to ONNX and checks the file.

    Args:
        model: A backbone, :class:`BackboneWithNeck`, or any module with that signature. It is not modified
            (the export runs on an eval-mode copy).
        path: The ONNX file to write (its folder is created).
        input_shape: ``(N, C, H, W)`` of the example input; H and W at least 32.
        opset: ONNX opset, at least 17. The dynamo exporter writes opset 18 and converts down when asked.
        dynamic: Dynamic batch, height and width (otherwise the file only takes ``input_shape``).
        fold_bn: Fold every BN into the conv before it (:func:`hrnet_mm.deploy.fold_batchnorm`).
        check: Run ``onnx.checker`` and compare onnxruntime with the original model (not the folded copy) at
            ``input_shape`` and each of ``check_shapes``; raise :class:`ExportError` beyond ``tolerance``.
        check_shapes: More ``(N, C, H, W)`` inputs to check (needs ``dynamic`` unless equal to ``input_shape``).
        exporter: ``'dynamo'`` (needs onnxscript) or ``'torchscript'`` (the legacy exporter).
        tolerance: Largest accepted ``max|ort - torch| / max|torch|``, per output.
        input_name: Name of the graph input; outputs are named ``output0``, ``output1``, ...
        log: Called with one line per step (e.g. ``print``).

    Returns:
        An :class:`OnnxReport`.

    Raises:
        ValueError: A bad shape, opset or exporter name.
        ExportError: The exporter failed, or the check found a larger error than ``tolerance``.
    """
    say = log or (lambda line: None)
    if exporter not in EXPORTERS:
        raise ValueError(f'exporter must be one of {EXPORTERS}, got {exporter!r}')
    if opset < MIN_OPSET:
        raise ValueError(f'opset must be at least {MIN_OPSET}, got {opset}')
    input_shape = _check_shape(input_shape)
    check_shapes = [_check_shape(s) for s in check_shapes]
    if not dynamic and any(s != input_shape for s in check_shapes):
        raise ValueError(f'a static export only takes {input_shape}; pass dynamic=True to check other shapes')

    original = copy.deepcopy(model).eval()
    folded, count = prepare(model, fold_bn)
    if fold_bn:
        say(f'fold BN: {count} conv+BN pairs folded')
    x = _random_input(input_shape, 0)
    with torch.no_grad():
        outputs = _outputs(folded(x))
    output_names = [f'output{i}' for i in range(len(outputs))]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    start = time.perf_counter()
    try:
        with _quiet():
            _export(folded, x, path, opset, dynamic, exporter, input_name, output_names)
    except ExportError:
        raise
    except Exception as e:  # the exporters raise many types; report the first line
        raise ExportError(f'{exporter} exporter failed: {type(e).__name__}: '
                          f'{(str(e).strip().splitlines() or [""])[0]}') from e
    seconds = time.perf_counter() - start
    import onnx
    file_opset = next((o.version for o in onnx.load(path, load_external_data=False).opset_import
                       if o.domain in ('', 'ai.onnx')), opset)
    size_mb = os.path.getsize(path) / 2 ** 20
    say(f'export: {path} ({exporter} exporter, opset {file_opset}, '
        f'{"dynamic batch/height/width" if dynamic else "static shape"}, {len(outputs)} output(s), '
        f'{size_mb:.1f} MiB) in {seconds:.1f} s')
    report = OnnxReport(path=path, exporter=exporter, opset=file_opset, input_shape=input_shape, dynamic=dynamic,
                        folded_bn=count, input_names=[input_name], output_names=output_names,
                        output_shapes=[tuple(o.shape) for o in outputs], export_seconds=seconds,
                        tolerance=tolerance)
    if not check:
        return report
    onnx.checker.check_model(path)
    say('check: onnx.checker passed')
    shapes = [input_shape] + [s for s in check_shapes if s != input_shape]
    inputs = [x] + [_random_input(s, i + 1) for i, s in enumerate(shapes[1:])]
    for shape, err in zip(shapes, check_onnx(path, original, inputs)):
        report.errors[shape] = err
        say(f'check {"x".join(map(str, shape))}: onnxruntime vs PyTorch max relative error {err:.2e}'
            f'{"" if err <= tolerance else f" > {tolerance:g}"}')
    if not report.passed:
        bad = ', '.join(f'{"x".join(map(str, s))}: {e:.2e}' for s, e in report.errors.items() if e > tolerance)
        raise ExportError(f'onnxruntime differs from PyTorch by more than {tolerance:g} (relative) at {bad}')
    return report


def check_onnx(path: str, model: nn.Module, inputs: Sequence[torch.Tensor],
               providers: Sequence[str] = ('CPUExecutionProvider',)) -> List[float]:
    """Runs the ONNX file with onnxruntime and ``model`` (in eval mode, without gradients) on each input.

    Returns:
        For each input, the largest :func:`rel_error` of onnxruntime's outputs against PyTorch's.

    Raises:
        ExportError: The numbers or shapes of outputs differ.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=list(providers))
    name = session.get_inputs()[0].name
    was_training = model.training
    model.eval()
    errors = []
    try:
        for x in inputs:
            with torch.no_grad():
                ref = _outputs(model(x))
            got = session.run(None, {name: x.detach().cpu().numpy()})
            if len(got) != len(ref):
                raise ExportError(f'the ONNX file has {len(got)} outputs, the model {len(ref)}')
            errors.append(max(rel_error(torch.from_numpy(g), r) for g, r in zip(got, ref)))
    finally:
        model.train(was_training)
    return errors


def script(model: nn.Module, fold_bn: bool = False) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of an eval-mode copy of ``model`` (optionally with BN folded).

    HRNet backbones, the HRNetV2/HRNetV2p necks, :class:`BackboneWithNeck` of them and the classification head
    compile directly; the scripted modules return lists of maps where the eager ones return tuples.
    """
    m, _ = prepare(model, fold_bn)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated in recent PyTorch
        return torch.jit.script(m)
