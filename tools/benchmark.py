"""Side-by-side speed of hrnet_mm's HRNet and the peers' HRNets (mmdet, mmseg, mmpose, mmpretrain, timm).

Every implementation of a case is built with the same weights (the peer's state dict is loaded into hrnet_mm
with ``strict=True``); their outputs are checked to agree before anything is timed. Then each is timed in the
same process, interleaved round by round so that machine noise hits all alike, and the table reports the
median latency, throughput, peak memory (CUDA; on CPU with ``--memory``), the speed ratio to the fastest peer
(> 1: faster) and, for the deploy models, the one-off preparation time (``to_deploy`` + first call, which
includes the compile time of ``hrnet_mm-deploy-compiled``).

Implementations:
  hrnet_mm            the module that configs build (``cpu_kernels=True``): plain NCHW layers in inference, and on
                      the CPU a float32 training step in channels_last with the CPU training kernels (Winograd
                      convolutions, fused batch norm + residual + ReLU), outputs back in NCHW
  hrnet_mm-plain      ``HRNet(cpu_kernels=False)``: torch's NCHW layers in training too (train only)
  hrnet_mm-deploy     :func:`hrnet_mm.deploy.to_deploy`: BN folded, channels_last, prepacked and fused oneDNN
                      convolutions (called directly where :mod:`hrnet_mm.ops.onednn` is built: header field
                      ``onednn=``), and on CPU Winograd 3x3 convolutions where they are faster (header field
                      ``winograd=``; its ``prep s`` includes timing the choice per shape) (infer only)
  hrnet_mm-deploy-bf16, hrnet_mm-deploy-int8   ``to_deploy(model, precision=...)`` (CPU infer, ``--precisions``):
                      bfloat16 convolutions (processors with native bfloat16), or int8 ones calibrated on
                      ``CALIBRATION_INPUTS`` random inputs of the case's shape
  hrnet_mm-deploy-compiled   ``to_deploy(model, compile=True)``: torch.compile with inductor weight freezing
                      (infer only, with ``--compile``)
  hrnet_mm-deploy-streams    CUDA only, with ``--branch-streams``: the deploy model (unfused) whose HR modules run
                      each branch on a CUDA stream of its own (:func:`use_branch_streams`; an experiment for
                      batch-1 latency, checked against hrnet_mm on the device)
  hrnet_mm-deploy-cudagraphs CUDA only, with ``--cuda-graphs``: ``to_deploy(model, compile=True)`` with inductor's
                      CUDA graphs (``triton.cudagraphs``): one graph launch per forward instead of ~300 kernels
  hrnet_mm-cl         ``HRNet().to(memory_format=torch.channels_last)``: channels_last weights too, with the CPU
                      training kernels (train only; its gradients are checked against hrnet_mm's in float64, and in
                      float32 against float64 with Winograd forced: the line under the table)
  hrnet_mm-cl-compiled   ``torch.compile`` of ``HRNet(cpu_kernels=False)`` with channels_last weights (train only,
                      with ``--compile``; ``prep s`` is its first step, which compiles; its gradients are checked
                      in float64 like hrnet_mm-cl's, which compiles once more)
  mmdet, mmseg, mmpose, mmpretrain, timm   the peers' backbones (mmseg fuses with bilinear upsampling, so
                      hrnet_mm is compared with it in its bilinear setting)
  onnxruntime, openvino, openvino-bf16   the runtimes users deploy to (infer only, CPU, ``--runtimes``): the
                      same weights exported to ONNX at the case's shape (BN folded), run by onnxruntime (all graph
                      optimisations) and OpenVINO (latency hint, one stream; f32, and bf16 where the processor has
                      native bfloat16), each with torch's thread count and no spinning threads
                      (:mod:`hrnet_mm.deploy.runtimes`); reduced-precision rows report their error, not fail on it
  onnxruntime-int8, openvino-int8   with ``--precisions int8``: each runtime on the int8 form of that export
                      (:func:`~hrnet_mm.deploy.runtimes.quantize_onnx`: onnxruntime's static QDQ quantization,
                      calibrated on the same inputs as hrnet_mm-deploy-int8)

Timing: the rows of a case run interleaved, round by round, so that machine noise hits all alike; with runtime
rows, in blocks of ``--block`` calls (default 5) so that each runtime's thread pool runs alone for a while. A
line under the table gives hrnet_mm-deploy's speed ratio to the fastest runtime at fp32, hrnet_mm-deploy-bf16's to
the fastest runtime at bf16, hrnet_mm-deploy-int8's to hrnet_mm-deploy and to the fastest runtime at int8.

Allocator: with ``--allocator tuned`` (the default) the process first calls
:func:`hrnet_mm.deploy.tune_cpu_allocator`, which :func:`~hrnet_mm.deploy.to_deploy` does for its users too: glibc
then keeps freed memory for the next forward instead of faulting it in again, page by page. It speeds up every
implementation (the peers by up to 1.4x at W18 512x1024), so the ratios are taken with each at its best.
``--allocator glibc`` leaves glibc's default (and builds the deploy models with ``tune_allocator=False``).

Modes: ``infer`` (no grad, eval) and ``train`` (forward + backward + SGD step, train mode, as a runner does).
On CPU, a line under the table splits each training row into its median forward, backward and optimizer times,
with hrnet_mm's ratio to the fastest peer for each phase (the phases' medians need not add up to the step's).
``--memory`` adds the CPU peak memory of one more step per implementation (allocator total during the step
above its start, from ``torch.profiler``'s memory events: activations, gradients, temporaries) and a table of
the training-step peak memory of hrnet_mm with and without ``with_cp`` (W32 512x512 batch 2 by default).

Examples::

    python tools/benchmark.py                                  # the default cases, CPU, fp32
    python tools/benchmark.py --cases w32-pose-b1 --mode infer --repeats 20 --json out.json
    python tools/benchmark.py --device cuda --dtype bf16 --channels-last
    python tools/benchmark.py --cases w32-pose-b1 w18-seg-b1 --mode infer --compile   # + compiled deploy model
    python tools/benchmark.py --mode train --memory --memory-cases w32-mem-b2          # + CPU memory, with_cp
    python tools/benchmark.py --allocator-effect --cases w32-pose-b1 w18-seg-b1        # glibc vs tuned allocator
    python tools/benchmark.py --mode infer --runtimes onnxruntime openvino --peers mmpose mmseg   # + the runtimes
    python tools/benchmark.py --device cuda --dtype bf16 --channels-last --mode infer --compile \
        --branch-streams --cuda-graphs --cases w32-pose-b1 w32-pose-b32     # the CUDA rows (tools/gpu_check.sh)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time
import types
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hrnet_mm  # noqa: E402
from hrnet_mm.deploy import allocator_tuned, to_deploy, tune_cpu_allocator  # noqa: E402
from hrnet_mm.deploy.precision import int8_weight_max  # noqa: E402
from hrnet_mm.deploy.runtimes import native_bf16, native_int8  # noqa: E402
from hrnet_mm.models import HRModule, HRNet  # noqa: E402
from hrnet_mm.models.arch import get_preset  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    arch: str
    height: int
    width: int
    batch: int
    modes: Tuple[str, ...] = ('infer',)


CASES = {c.name: c for c in [
    Case('w32-pose-b1', 'w32', 256, 192, 1, ('infer', 'train')),
    Case('w32-pose-b32', 'w32', 256, 192, 32, ('infer', 'train')),
    Case('w18-seg-b1', 'w18', 512, 1024, 1, ('infer', 'train')),
    Case('w48-seg-b1', 'w48', 512, 1024, 1, ('infer', 'train')),
    # 800x1333 as mmdet feeds it to the backbone: padded to a multiple of 32 (the peers fail on 1333 itself)
    Case('w32-det-b1', 'w32', 800, 1344, 1, ('infer', 'train')),
    Case('w18-train-b2', 'w18', 256, 256, 2, ('train',)),
    Case('w32-mem-b2', 'w32', 512, 512, 2, ('train',)),
]}
DEFAULT_CASES = ['w32-pose-b1', 'w18-seg-b1', 'w18-train-b2']  # the rest: --cases, they take minutes on CPU
PEERS = ['mmdet', 'mmseg', 'mmpose', 'mmpretrain', 'timm']
CUDA_ONLY = ('hrnet_mm-deploy-streams', 'hrnet_mm-deploy-cudagraphs')  # checked against hrnet_mm on the device
RUNTIMES = ['onnxruntime', 'openvino']
# bf16 keeps 8 mantissa bits, int8 256 levels per layer on random weights (their wide-tailed activations cost more
# than a trained network's; the task metrics are in docs/benchmarks.md): these catch a broken graph, not rounding
REDUCED_PRECISION_TOL = {'bf16': 5e-2, 'int8': 1e-1}
# the runtimes' int8 files round every tensor between operators to uint8, the sums and upsamplings too, where
# hrnet_mm-deploy-int8 keeps float32 between its convolutions: about twice the error on random weights
RUNTIME_INT8_TOL = 2.5e-1
PRECISIONS = ['bf16', 'int8']
CALIBRATION_INPUTS = 4


def _branch_streams_forward(self: HRModule, xs: List[torch.Tensor]) -> List[torch.Tensor]:
    """:meth:`HRModule.forward` with branch ``i`` on CUDA stream ``i`` (then the fusion on the current stream)."""
    if not xs[0].is_cuda:
        return HRModule.forward(self, xs)
    streams = self.__dict__.setdefault('_cuda_streams', {}).setdefault(xs[0].device, [])
    while len(streams) < len(xs):
        streams.append(torch.cuda.Stream(device=xs[0].device))
    main = torch.cuda.current_stream(xs[0].device)
    ys: List[torch.Tensor] = []
    for x, branch, stream in zip(xs, self.branches, streams):
        stream.wait_stream(main)  # x was written on the current stream
        with torch.cuda.stream(stream):
            x.record_stream(stream)  # its memory is not reused before this stream has read it
            ys.append(branch(x))
    for y, stream in zip(ys, streams):
        main.wait_stream(stream)
        y.record_stream(main)  # allocated on the branch stream, read by the fusion on the current one
    return ys if self.fuse_layers is None else self._fuse(ys)


def use_branch_streams(model: nn.Module) -> nn.Module:
    """Makes every :class:`HRModule` in ``model`` (in place) run its parallel branches concurrently, each on a CUDA
    stream of its own, and fuse them after all have finished; inputs that are not on a GPU take the plain forward.
    For inference: the streams are not synchronised for autograd."""
    for module in model.modules():
        if isinstance(module, HRModule):
            module.forward = types.MethodType(_branch_streams_forward, module)
    return model


def _extra(arch: str) -> dict:
    return {f'stage{k + 1}': s.to_extra() for k, s in enumerate(get_preset(arch))}


def build_peer(name: str, arch: str) -> nn.Module:
    """The peer's backbone returning all four branches."""
    from hrnet_mm.registry import build_in_scope
    if name == 'timm':
        import timm
        return timm.create_model(f'hrnet_{arch}', pretrained=False, features_only=True, feature_location='',
                                 out_indices=(1, 2, 3, 4))
    extra = _extra(arch)
    if name == 'mmpose':
        extra['stage4']['multiscale_output'] = True
    cfg = dict(type='HRNet', arch=arch) if name == 'mmpretrain' else dict(type='HRNet', extra=extra)
    if name == 'mmdet':
        cfg['norm_eval'] = False  # train-mode BN like the others
    return build_in_scope(name, cfg)


def _randomize(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if name.endswith('running_var') or (t.dim() == 1 and name.endswith('weight')):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif t.dim() == 1:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)


def build_impls(case: Case, names: List[str], prep: Optional[Dict[str, float]] = None,
                tune_allocator: bool = True) -> Dict[str, nn.Module]:
    """Peers with random weights, and hrnet_mm with the same weights (strict load). ``prep`` receives the
    seconds each deploy model took to prepare; ``tune_allocator`` is passed to ``to_deploy``."""
    impls: Dict[str, nn.Module] = {}
    prep = {} if prep is None else prep
    reference = None
    for name in names:
        if name.startswith('hrnet_mm') or name.split('-')[0] in RUNTIMES:
            continue
        try:
            peer = build_peer(name, case.arch)
        except Exception as exc:  # noqa: BLE001 - a missing peer is reported, not fatal
            print(f'  skipping {name}: {type(exc).__name__}: {exc}', file=sys.stderr)
            continue
        if reference is None:
            _randomize(peer)
            reference = {k: v for k, v in peer.state_dict().items()}
        else:
            peer.load_state_dict({k: v for k, v in reference.items() if k in peer.state_dict()}, strict=False)
        impls[name] = peer
    if reference is None:
        raise SystemExit('no peer could be built')
    ours = HRNet(arch=case.arch)
    ours.load_state_dict({k: v for k, v in reference.items() if k in ours.state_dict()}, strict=True)
    if 'hrnet_mm' in names:
        impls['hrnet_mm'] = ours
    if 'mmseg' in impls:
        impls['hrnet_mm-bilinear'] = copy.deepcopy(ours)
        for m in impls['hrnet_mm-bilinear'].modules():
            if hasattr(m, 'upsample_mode'):
                m.upsample_mode, m.align_corners = 'bilinear', False
    for name, kwargs, channels_last, compiled in (('hrnet_mm-cl', {}, True, False),
                                                  ('hrnet_mm-cl-compiled', dict(cpu_kernels=False), True, True),
                                                  ('hrnet_mm-plain', dict(cpu_kernels=False), False, False)):
        if name in names:
            model = HRNet(arch=case.arch, **kwargs)
            model.load_state_dict(ours.state_dict(), strict=True)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            if compiled:
                model.compile()  # in place: names and state dict stay the module's
            impls[name] = model
    for name, kwargs in (('hrnet_mm-deploy', {}), ('hrnet_mm-deploy-compiled', dict(compile=True)),
                         ('hrnet_mm-deploy-streams', dict(fuse=False)),
                         ('hrnet_mm-deploy-cudagraphs', dict(compile=True,
                                                             compile_options={'triton.cudagraphs': True}))):
        if name in names:
            t0 = time.perf_counter()
            impls[name] = to_deploy(ours.eval(), tune_allocator=tune_allocator, **kwargs)
            if name == 'hrnet_mm-deploy-streams':
                use_branch_streams(impls[name])
            prep[name] = time.perf_counter() - t0
    for precision in PRECISIONS:
        name = f'hrnet_mm-deploy-{precision}'
        if name in names:
            calibration = calibration_inputs(case) if precision == 'int8' else None
            t0 = time.perf_counter()
            impls[name] = to_deploy(ours.eval(), tune_allocator=tune_allocator, precision=precision,
                                    calibration=calibration)
            prep[name] = time.perf_counter() - t0
    runtime_rows = [n for n in names if n.split('-')[0] in RUNTIMES]
    if runtime_rows:
        impls.update(build_runtimes(ours, case, runtime_rows, prep))
    return impls


def calibration_inputs(case: Case) -> List[torch.Tensor]:
    """The int8 rows' calibration data: ``CALIBRATION_INPUTS`` seeded random inputs of the case's shape."""
    return [torch.randn(case.batch, 3, case.height, case.width, generator=torch.Generator().manual_seed(i))
            for i in range(CALIBRATION_INPUTS)]


def runtime_rows(runtimes: List[str], precisions: Sequence[str] = ()) -> List[str]:
    """The rows of ``--runtimes``: each runtime at fp32, OpenVINO at bf16 where the processor has it, and with
    ``'int8'`` in ``precisions`` each runtime at int8."""
    rows = list(runtimes)
    if 'openvino' in runtimes and native_bf16():
        rows.append('openvino-bf16')
    if 'int8' in precisions:
        rows += [f'{r}-int8' for r in runtimes]
    return rows


def build_runtimes(model: nn.Module, case: Case, names: List[str], prep: Dict[str, float]) -> Dict[str, Any]:
    """``model`` exported to ONNX at the case's shape (BN folded, TorchScript exporter) and opened by each runtime
    of ``names`` with torch's thread count (the ``-int8`` rows: on the export's int8 form, calibrated on
    :func:`calibration_inputs`); a runtime that is not installed is reported and left out. ``prep`` receives each
    one's export (and quantization) and session time."""
    import tempfile

    from hrnet_mm.deploy.export import export_onnx
    from hrnet_mm.deploy.runtimes import OnnxRuntimeModel, OpenVinoModel, quantize_onnx

    shape = (case.batch, 3, case.height, case.width)
    threads = torch.get_num_threads()
    out: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix='hrnet_mm_benchmark_') as folder:  # the runtimes read the file once
        path = os.path.join(folder, f'{case.name}.onnx')
        t0 = time.perf_counter()
        export_onnx(model.eval(), path, shape, dynamic=False, check=False, exporter='torchscript')
        exported = time.perf_counter() - t0
        quantized = 0.0
        if any(name.endswith('-int8') for name in names):
            t0 = time.perf_counter()
            int8_path = os.path.join(folder, f'{case.name}-int8.onnx')
            quantize_onnx(path, int8_path, calibration_inputs(case))
            quantized = time.perf_counter() - t0
        for name in names:
            runtime, _, precision = name.partition('-')
            precision = precision or 'f32'
            t0 = time.perf_counter()
            try:
                file = int8_path if precision == 'int8' else path
                if runtime == 'onnxruntime':
                    out[name] = OnnxRuntimeModel(file, threads, precision)
                else:
                    out[name] = OpenVinoModel(file, threads, precision, shape)
            except (ImportError, ValueError) as exc:
                print(f'  skipping {name}: {exc}', file=sys.stderr)
                continue
            prep[name] = exported + (quantized if precision == 'int8' else 0.0) + time.perf_counter() - t0
    return out


def _outputs(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def max_rel_err(outs: List[torch.Tensor], refs: List[torch.Tensor]) -> float:
    """The largest ``max|a - b| / max|b|`` over pairs of outputs, in float32."""
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(outs, refs))


def check_agreement(impls: Dict[str, nn.Module], x: torch.Tensor, tol: float = 1e-4,
                    prep: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Max relative error of each implementation's outputs against hrnet_mm's (mmseg against bilinear).
    The first call of each deploy model (its one-off preparation, compile included) is added to ``prep``."""
    errs = {}
    prep = {} if prep is None else prep
    with torch.no_grad():
        for m in impls.values():
            m.eval()
        ref = _outputs(impls['hrnet_mm'], x)
        ref_bilinear = _outputs(impls['hrnet_mm-bilinear'], x) if 'hrnet_mm-bilinear' in impls else None
        for name, m in list(impls.items()):
            if name == 'hrnet_mm-cl-compiled' or name in CUDA_ONLY:
                continue  # a training row: its gradients are checked (compiling an eval graph too would be slow);
                # the CUDA-only rows are checked on the device (check_on_device)
            base = ref_bilinear if name in ('mmseg', 'hrnet_mm-bilinear') else ref
            t0 = time.perf_counter()
            try:
                outs = _outputs(m, x.contiguous(memory_format=torch.channels_last) if 'deploy' in name else x)
            except Exception as exc:  # noqa: BLE001 - a peer that cannot run this input is reported and left out
                if name.startswith('hrnet_mm'):
                    raise
                print(f'  skipping {name}: {type(exc).__name__}: {str(exc).splitlines()[0]}', file=sys.stderr)
                del impls[name]
                continue
            if name in prep:
                prep[name] += time.perf_counter() - t0
            err = errs[name] = max_rel_err(outs, base)
            limit = tolerance(name, tol)
            if err > limit:
                raise SystemExit(f'{name} disagrees with hrnet_mm: relative error {err:.2e} > {limit}')
    return errs


def tolerance(name: str, tol: float) -> float:
    """The largest relative error allowed to the row ``name`` (``tol`` for float32 rows)."""
    precision = name.rsplit('-', 1)[-1]
    if precision == 'int8' and name.split('-')[0] in RUNTIMES:
        return RUNTIME_INT8_TOL
    if precision == 'int8':  # 7-bit weights without VNNI (int8_weight_max() 63): twice the weights' step
        return REDUCED_PRECISION_TOL['int8'] * 127 / int8_weight_max()
    return REDUCED_PRECISION_TOL.get(precision, tol)


@contextlib.contextmanager
def _matmul_tf32(allow: bool):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def check_on_device(impls: Dict[str, nn.Module], x: torch.Tensor, tol: float = 1e-4,
                    prep: Optional[Dict[str, float]] = None) -> Dict[str, float]:
    """Max relative error of the CUDA-only rows against hrnet_mm, both on ``x``'s device in float32 with TF32 off
    (TF32 keeps 10 mantissa bits: two TF32 runs of the same function differ by more than ``tol``); their first
    call (compile, graph capture) is added to ``prep``."""
    errs: Dict[str, float] = {}
    prep = {} if prep is None else prep
    names = [k for k in CUDA_ONLY if k in impls]
    if not names:
        return errs
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False), \
            _matmul_tf32(False):
        ref = _outputs(impls['hrnet_mm'].eval(), x)
        for name in names:
            t0 = time.perf_counter()
            outs = [o.clone() for o in _outputs(impls[name], x.contiguous(memory_format=torch.channels_last))]
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            prep[name] = prep.get(name, 0.0) + time.perf_counter() - t0
            errs[name] = max_rel_err(outs, ref)
            if errs[name] > tol:
                raise SystemExit(f'{name} disagrees with hrnet_mm on {x.device}: '
                                 f'relative error {errs[name]:.2e} > {tol}')
    return errs


def _grads(model: nn.Module, x: torch.Tensor, frozen_norms: bool = False) -> Dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    model.train()  # not chained: mmdet's HRNet.train() returns None
    if frozen_norms:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    sum(o.square().mean() for o in _outputs(model, x)).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def check_gradients(impls: Dict[str, nn.Module], x: torch.Tensor, tol: float = 1e-4) -> Dict[str, float]:
    """Gradient agreement of the ``hrnet_mm-*`` training variants with hrnet_mm: the max over parameters of
    ``max|g - g_ref| / max|g_ref|``, computed in float64, where any difference is a different function rather than
    rounding (in float32 the deep random networks here amplify rounding to ~1e-2 for any change of kernel)."""
    errs: Dict[str, float] = {}
    names = [k for k in impls if k.startswith('hrnet_mm-') and 'deploy' not in k and 'bilinear' not in k]
    if not names:
        return errs
    ref = _grads(impls['hrnet_mm'].double(), x.double())
    impls['hrnet_mm'].float()
    for name in names:
        grads = _grads(impls[name].double(), x.double())
        impls[name].float()
        errs[name] = max(((grads[k] - g).abs().max() / g.abs().max().clamp_min(1e-30)).item() for k, g in ref.items())
        if errs[name] > tol:
            raise SystemExit(f'{name} gradients disagree with hrnet_mm: relative error {errs[name]:.2e} > {tol}')
    return errs


def check_float32_gradients(impls: Dict[str, nn.Module], x: torch.Tensor) -> Dict[str, float]:
    """Float32 training gradients of every row against the float64 gradients of the same weights (the exact
    function, up to 1e-15): ``||g32 - g64|| / ||g64||`` over all parameters together. hrnet_mm's rows run their
    CPU Winograd convolutions here, forced to F(4x4, 3x3) (the least exact tile) wherever they are eligible, so
    this bounds the gradients that the timed steps compute: within 1e-2 (measured 4e-6 to 1.7e-3 over random
    inputs: a ReLU input that rounds to the other side of zero moves what follows it; the peers' own float32 error
    6e-7 to 5e-4; a wrong gradient would be O(1)). The norm layers use their running statistics
    here: with the batch statistics of the small low-resolution maps, the random networks amplify any float32
    rounding to 0.5-2% (the peers' own float32 gradients included), which would hide a wrong gradient; the
    convolutions' gradients are the same code either way."""
    from hrnet_mm.ops import winograd
    truth = _grads(copy.deepcopy(impls['hrnet_mm']).double(), x.double(), frozen_norms=True)
    errs: Dict[str, float] = {}
    for name, model in impls.items():
        if ('deploy' in name or 'bilinear' in name or name == 'hrnet_mm-cl-compiled' or name in CUDA_ONLY
                or name == 'mmseg'):  # mmseg fuses with bilinear upsampling: another function
            continue
        with winograd.force_algorithm(4) if name.startswith('hrnet_mm') else contextlib.nullcontext():
            grads = _grads(model, x, frozen_norms=True)
        keys = [k for k in truth if k in grads]  # the peers name the backbone's parameters alike
        if not keys:
            raise SystemExit(f'{name}: no parameter names in common with hrnet_mm')
        diff = sum(((grads[k].double() - truth[k]) ** 2).sum() for k in keys)
        errs[name] = (diff / sum((truth[k] ** 2).sum() for k in keys)).sqrt().item()
        if name.startswith('hrnet_mm') and errs[name] > 1e-2:
            raise SystemExit(f'{name} float32 gradients differ from float64 by {errs[name]:.2e} > 1e-2')
    return errs


def peak_cpu_memory_mb(step: Callable[[], None]) -> float:
    """Peak CPU memory of one call of ``step`` above what was allocated when it started (MiB): the maximum of
    the allocator's running total over the profiler's allocation events."""
    from torch._C._profiler import _EventType
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == 'cpu':
            events.append((e.start_time_ns, e.extra_fields.total_allocated, e.extra_fields.alloc_size))
        stack.extend(e.children)
    if not events:
        return 0.0
    events.sort()
    start = events[0][1] - events[0][2]
    return max(total for _, total, _ in events) / 2 ** 20 - start / 2 ** 20


def _timer(device: torch.device) -> Callable[[], float]:
    if device.type == 'cuda':
        def now() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
        return now
    return time.perf_counter


def make_step(name: str, model: nn.Module, x: torch.Tensor, mode: str, autocast: Optional[torch.dtype],
              device: torch.device, phases: Optional[List[Tuple[float, float, float]]] = None
              ) -> Callable[[], None]:
    """One timed unit of work: a forward (infer) or forward+backward+SGD step (train). With ``phases``, a train
    step appends the seconds of its forward (with the loss), backward (with ``zero_grad``) and optimizer step."""
    if 'deploy' in name or mode == 'infer':
        model.eval()
        if 'deploy' in name:
            x = x.contiguous(memory_format=torch.channels_last)

        def infer() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                _outputs(model, x)
        return infer
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    now = _timer(device) if phases is not None else lambda: 0.0

    def train() -> None:
        t0 = now()
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = sum(o.float().square().mean() for o in _outputs(model, x))
        t1 = now()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = now()
        opt.step()
        if phases is not None:
            phases.append((t1 - t0, t2 - t1, now() - t2))
    return train


@dataclass
class Row:
    case: str
    mode: str
    impl: str
    median_ms: float
    throughput: float
    peak_mem_mb: Optional[float]
    ratio_to_fastest_peer: float = 0.0
    rel_err: Optional[float] = None
    prep_s: Optional[float] = None
    grad_err_fp32: Optional[float] = None
    phase_ms: Optional[Tuple[float, float, float]] = None  # train on CPU: median forward, backward, optimizer


def run_case(case: Case, mode: str, args: argparse.Namespace, device: torch.device) -> List[Row]:
    if mode == 'infer':
        names = (['hrnet_mm', *args.peers, 'hrnet_mm-deploy'] + (['hrnet_mm-deploy-compiled'] if args.compile else [])
                 + (['hrnet_mm-deploy-streams'] if args.branch_streams else [])
                 + (['hrnet_mm-deploy-cudagraphs'] if args.cuda_graphs else [])
                 + ([f'hrnet_mm-deploy-{p}' for p in args.precisions] if device.type == 'cpu' else [])
                 + (runtime_rows(args.runtimes, args.precisions) if device.type == 'cpu' else []))
    else:
        names = (['hrnet_mm', *args.peers] + ([] if args.no_channels_last_row else ['hrnet_mm-cl', 'hrnet_mm-plain'])
                 + (['hrnet_mm-cl-compiled'] if args.compile else []))
    prep: Dict[str, float] = {}
    impls = build_impls(case, names, prep, tune_allocator=args.allocator == 'tuned')
    x = torch.randn(case.batch, 3, case.height, case.width)
    check_x = x[:1] if case.batch > 1 else x
    errs = check_agreement(impls, check_x, prep=prep)
    impls.pop('hrnet_mm-bilinear', None)
    grad_errs: Dict[str, float] = {}
    if mode == 'train':
        errs.update(check_gradients(impls, check_x[..., :128, :128]))
        grad_errs = check_float32_gradients(impls, check_x[..., :128, :128])
    modules = [k for k in impls if k.split('-')[0] not in RUNTIMES]  # the runtimes take NCHW arrays on the CPU
    if args.channels_last:
        impls.update({k: impls[k].to(memory_format=torch.channels_last) for k in modules})
        x = x.contiguous(memory_format=torch.channels_last)
    impls.update({k: impls[k].to(device) for k in modules})
    x = x.to(device)
    errs.update(check_on_device(impls, x[:1], prep=prep))
    autocast = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.dtype]
    # the split of a CPU train step (on CUDA the extra synchronisations would change what is timed)
    phases: Dict[str, List[Tuple[float, float, float]]] = {k: [] for k in impls}
    steps = {k: make_step(k, m, x, mode, autocast, device, phases[k] if device.type == 'cpu' else None)
             for k, m in impls.items()}
    now = _timer(device)
    for k, step in steps.items():  # warm-up
        for i in range(max(args.warmup, 1 if k.endswith('-compiled') else 0)):
            t0 = now()
            step()
            if i == 0 and k == 'hrnet_mm-cl-compiled':
                prep[k] = now() - t0  # the first step compiles
    for v in phases.values():
        v.clear()
    times: Dict[str, List[float]] = {k: [] for k in steps}
    peak: Dict[str, Optional[float]] = {k: None for k in steps}
    # interleaved rounds: noise hits every implementation alike; with other runtimes, blocks of calls, so that
    # each thread pool runs alone for a while
    block = max(args.block or (5 if any(k.split('-')[0] in RUNTIMES for k in steps) else 1), 1)
    for _ in range(-(-args.repeats // block)):
        for k, step in steps.items():
            for _ in range(block):
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats()
                t0 = now()
                step()
                times[k].append(now() - t0)
                if device.type == 'cuda':
                    peak[k] = max(peak[k] or 0, torch.cuda.max_memory_allocated() / 2 ** 20)
    split = {k: tuple(statistics.median(p) * 1e3 for p in zip(*v)) for k, v in phases.items() if v}
    if args.memory and device.type == 'cpu':
        for k, step in steps.items():
            peak[k] = peak_cpu_memory_mb(step)
    rows = []
    for k in steps:
        med = statistics.median(times[k])
        rows.append(Row(case.name, mode, k, med * 1e3, case.batch / med, peak[k], rel_err=errs.get(k),
                        prep_s=prep.get(k), grad_err_fp32=grad_errs.get(k), phase_ms=split.get(k)))
    fastest_peer = min((r.median_ms for r in rows if r.impl in PEERS), default=None)
    for r in rows:
        r.ratio_to_fastest_peer = fastest_peer / r.median_ms if fastest_peer else float('nan')
    return rows


def run_memory_case(case: Case, args: argparse.Namespace) -> List[Row]:
    """CPU peak memory of one training step of hrnet_mm without and with ``with_cp`` (same weights)."""
    x = torch.randn(case.batch, 3, case.height, case.width)
    rows = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = HRNet(arch=case.arch, with_cp=with_cp)
        step = make_step('hrnet_mm', model, x, 'train', None, torch.device('cpu'))
        step()  # gradients and optimizer state exist from here on, as in a runner
        t0 = time.perf_counter()
        mem = peak_cpu_memory_mb(step)
        sec = time.perf_counter() - t0
        rows.append(Row(case.name, 'train', 'hrnet_mm-with_cp' if with_cp else 'hrnet_mm', sec * 1e3,
                        case.batch / sec, mem))
    for r in rows:
        r.ratio_to_fastest_peer = r.peak_mem_mb / rows[0].peak_mem_mb  # here: memory relative to without with_cp
    return rows


def allocator_child(case: Case, impl: str, allocator: str, repeats: int, warmup: int) -> Dict[str, float]:
    """Runs in a fresh process: the median forward time and page faults per forward of hrnet_mm (or its deploy
    model) on ``case``, with glibc's default allocator or after :func:`tune_cpu_allocator`."""
    import resource
    if allocator == 'tuned' and not tune_cpu_allocator():
        raise SystemExit('the allocator could not be tuned (not glibc)')
    model = HRNet(arch=case.arch).eval()
    x = torch.randn(case.batch, 3, case.height, case.width)
    if impl == 'hrnet_mm-deploy':
        model = to_deploy(model, tune_allocator=False)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return dict(median_ms=statistics.median(times) * 1e3, faults_per_call=faults / repeats)


def allocator_effect(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The table of ``--allocator-effect``: every (case, impl, allocator) timed in its own fresh process, since
    glibc's default behaviour depends on what the process allocated before."""
    import subprocess
    results = []
    for name in args.cases:
        for impl in ('hrnet_mm', 'hrnet_mm-deploy'):
            res = dict(case=name, impl=impl)
            for allocator in ('glibc', 'tuned'):
                print(f'  running {name} {impl} allocator={allocator} ...', file=sys.stderr, flush=True)
                cmd = [sys.executable, os.path.abspath(__file__), '--allocator-child', name, impl, allocator,
                       '--repeats', str(args.repeats), '--warmup', str(args.warmup)]
                if args.threads:
                    cmd += ['--threads', str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f'{name} {impl} {allocator}: {out.stderr.strip().splitlines()[-1:]}')
                res[allocator] = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(res)
    return results


def format_allocator_table(results: List[Dict[str, Any]]) -> str:
    head = (f'{"case":<14} {"impl":<16} {"glibc ms":>9} {"tuned ms":>9} {"speedup":>8} '
            f'{"faults/call glibc":>18} {"faults/call tuned":>18}')
    lines = [head, '-' * len(head)]
    for r in results:
        g, t = r['glibc'], r['tuned']
        lines.append(f'{r["case"]:<14} {r["impl"]:<16} {g["median_ms"]:>9.1f} {t["median_ms"]:>9.1f} '
                     f'{g["median_ms"] / t["median_ms"]:>7.2f}x {g["faults_per_call"]:>18.0f} '
                     f'{t["faults_per_call"]:>18.0f}')
    return '\n'.join(lines)


def processor_name() -> str:
    """The CPU model as the kernel reports it (``model name`` of /proc/cpuinfo), else ``platform.processor()``.

    Ratios depend on it: the oneDNN kernels differ between AVX2 and AVX-512 processors (see ``cpu_isa``)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return ' '.join(line.split(':', 1)[1].split()) or '?'
    except OSError:
        pass
    return platform.processor() or '?'


def environment(device: torch.device) -> Dict[str, str]:
    import mmengine
    info = dict(python=platform.python_version(), torch=torch.__version__, mmengine=mmengine.__version__,
                hrnet_mm=hrnet_mm.__version__, machine=platform.machine(), processor=processor_name(),
                cpu_isa=torch.backends.cpu.get_cpu_capability(),
                threads=str(torch.get_num_threads()), device=str(device),
                allocator='tuned' if allocator_tuned() else 'glibc-default')
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    info['winograd'] = winograd_state() if device.type == 'cpu' else 'cpu-only'
    if device.type == 'cpu':
        info['onednn'] = onednn_state()
        info['int8_weights'] = '8-bit' if native_int8() else '7-bit(no_VNNI)'  # hrnet_mm-deploy-int8's weights
    return info


def onednn_state() -> str:
    """Whether the deploy models call oneDNN directly here (:mod:`hrnet_mm.ops.onednn`): its oneDNN version, or off
    and why (then they call torch's operators). Called before any timing, like :func:`winograd_state`."""
    from hrnet_mm.ops import onednn
    if onednn.available():
        return f'direct-{onednn.extension().version()}'
    return 'off(' + (onednn.build_error() or '?').replace(' ', '_')[:60] + ')'


def winograd_state() -> str:
    """Whether the deploy model can use the Winograd kernel here: its build name, or off and why. Called before
    any timing, so a first build on this machine (about 45 s, once) is not counted as preparation time."""
    from hrnet_mm.ops import winograd
    if winograd.available():
        return winograd.build_name()
    return 'off(' + (winograd.build_error() or '?').replace(' ', '_')[:60] + ')'


def format_table(rows: List[Row]) -> str:
    head = f'{"case":<14} {"mode":<6} {"impl":<25} {"median ms":>10} {"img/s":>8} {"peak MB":>8} ' \
           f'{"vs fastest peer":>15} {"rel err":>8} {"prep s":>7}'
    lines = [head, '-' * len(head)]
    for r in rows:
        mem = f'{r.peak_mem_mb:.0f}' if r.peak_mem_mb is not None else '-'
        err = f'{r.rel_err:.0e}' if r.rel_err is not None else '-'
        prep = f'{r.prep_s:.1f}' if r.prep_s is not None else '-'
        lines.append(f'{r.case:<14} {r.mode:<6} {r.impl:<25} {r.median_ms:>10.1f} {r.throughput:>8.2f} {mem:>8} '
                     f'{r.ratio_to_fastest_peer:>14.2f}x {err:>8} {prep:>7}')
    return '\n'.join(lines)


def format_phases(rows: List[Row]) -> List[str]:
    """One line per CPU training case: each row's median forward / backward / optimizer milliseconds, and for
    hrnet_mm's rows the ratio of each phase to the same phase of the fastest peer (the peer of the best
    ``vs fastest peer``)."""
    lines = []
    for case_name in dict.fromkeys(r.case for r in rows if r.phase_ms is not None):
        case_rows = [r for r in rows if r.case == case_name and r.phase_ms is not None]
        peers = [r for r in case_rows if r.impl in PEERS]
        best = min(peers, key=lambda r: r.median_ms) if peers else None
        parts = []
        for r in case_rows:
            text = f'{r.impl} ' + '/'.join(f'{v:.1f}' for v in r.phase_ms)
            if best is not None and r.impl not in PEERS:
                text += ' (' + '/'.join(f'{b / v:.2f}x' for b, v in zip(best.phase_ms, r.phase_ms)) + ')'
            parts.append(text)
        lines.append(f'{case_name} train phases, median ms forward/backward/optimizer'
                     + (f' (hrnet_mm rows: vs {best.impl})' if best else '') + ': ' + ', '.join(parts))
    return lines


def format_runtime_ratios(rows: List[Row]) -> List[str]:
    """Per infer case with runtime or precision rows: speed ratios (> 1: hrnet_mm's row is faster) of
    hrnet_mm-deploy to the fastest runtime at fp32, of hrnet_mm-deploy-bf16 to the fastest runtime at bf16, and of
    hrnet_mm-deploy-int8 to hrnet_mm-deploy and to the fastest runtime at int8."""
    lines = []
    for case in dict.fromkeys(r.case for r in rows if r.mode == 'infer'):
        get = {r.impl: r for r in rows if r.case == case and r.mode == 'infer'}
        found = [r for name, r in get.items() if name.split('-')[0] in RUNTIMES]
        by_precision: Dict[str, List[Row]] = {}
        for r in found:
            by_precision.setdefault(r.impl.partition('-')[2] or 'fp32', []).append(r)

        def versus_runtimes(label: str, ours: str) -> Optional[str]:
            group = by_precision.get(label)
            if not group or ours not in get:
                return None
            best = min(group, key=lambda r: r.median_ms)
            return f'{ours} is {best.median_ms / get[ours].median_ms:.2f}x the fastest runtime at {label} ({best.impl})'

        int8_vs_fp32 = None
        if 'hrnet_mm-deploy-int8' in get and 'hrnet_mm-deploy' in get:
            ratio = get['hrnet_mm-deploy'].median_ms / get['hrnet_mm-deploy-int8'].median_ms
            int8_vs_fp32 = f'hrnet_mm-deploy-int8 is {ratio:.2f}x hrnet_mm-deploy'
        parts = [versus_runtimes('fp32', 'hrnet_mm-deploy'), versus_runtimes('bf16', 'hrnet_mm-deploy-bf16'),
                 int8_vs_fp32, versus_runtimes('int8', 'hrnet_mm-deploy-int8')]
        parts = [p for p in parts if p]
        if parts:
            lines.append(f'{case} infer: ' + '; '.join(parts))
    return lines


def format_memory_table(rows: List[Row]) -> str:
    head = f'{"case":<14} {"impl":<18} {"peak MB":>8} {"vs no with_cp":>13} {"step s":>7}'
    lines = [head, '-' * len(head)]
    for r in rows:
        lines.append(f'{r.case:<14} {r.impl:<18} {r.peak_mem_mb:>8.0f} {r.ratio_to_fastest_peer:>12.2f}x '
                     f'{r.median_ms / 1e3:>7.1f}')
    return '\n'.join(lines)


def _write_json(path: str, env: Dict[str, str], args: argparse.Namespace, rows: List[Row],
                memory_rows: List[Row]) -> None:
    command = ' '.join(['python tools/benchmark.py', *(a for a in sys.argv[1:])])
    with open(path, 'w') as f:
        json.dump(dict(command=command, environment=env, args=vars(args), rows=[asdict(r) for r in rows],
                       memory_rows=[asdict(r) for r in memory_rows]), f, indent=2)
        f.write('\n')


def _case_label(name: str) -> str:
    case = CASES.get(name)
    if case is None:
        return name
    return f'{case.arch.upper()} {case.height}x{case.width}, batch {case.batch}'


README_BEGIN, README_END = '<!-- speed table: begin -->\n', '<!-- speed table: end -->'


def readme_table(text: str) -> str:
    """The speed table between the README's markers."""
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f'no {README_BEGIN.strip()} ... {README_END} block')
    return text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()


def write_readme_table(path: str, table: str) -> None:
    """Replaces the README's speed table with ``table``."""
    with open(path, encoding='utf-8') as f:
        text = f.read()
    old = readme_table(text)
    head, rest = text.split(README_BEGIN, 1)
    rest = rest.split(README_END, 1)[1]
    with open(path, 'w', encoding='utf-8') as f:
        f.write(f'{head}{README_BEGIN}{table}\n{README_END}{rest}')
    print(f'{path}: speed table {"unchanged" if old == table.strip() else "updated"}', file=sys.stderr)


def format_markdown(result: Dict[str, object]) -> str:
    """The short speed table of the README from a ``--json`` result: per case, hrnet_mm's speed against the fastest
    peer HRNet (> 1: faster) for inference (the module, its deploy model) and for a training step, with the
    fastest peer's time, then the machine and the command that measured it."""
    rows = [Row(**{k: tuple(v) if k == 'phase_ms' and v else v for k, v in r.items()})
            for r in result['rows']]  # type: ignore[union-attr]
    peers = set(PEERS)
    lines = ['| case | inference: `hrnet_mm.HRNet` | inference: `to_deploy` | training step: `hrnet_mm.HRNet` '
             '| fastest peer: inference / training step |', '|---|---|---|---|---|']
    for case in dict.fromkeys(r.case for r in rows):
        get = {(r.mode, r.impl): r for r in rows if r.case == case}

        def ratio(mode: str, impl: str) -> str:
            r = get.get((mode, impl))
            return f'{r.ratio_to_fastest_peer:.2f}x' if r is not None else '-'

        def fastest(mode: str) -> str:
            times = [r.median_ms for (m, impl), r in get.items() if m == mode and impl in peers]
            return f'{min(times):.0f} ms' if times else '-'

        lines.append(f'| {_case_label(case)} | {ratio("infer", "hrnet_mm")} | {ratio("infer", "hrnet_mm-deploy")} '
                     f'| {ratio("train", "hrnet_mm")} | {fastest("infer")} / {fastest("train")} |')
    env = result.get('environment', {})  # type: ignore[union-attr]
    machine = ', '.join(f'{k}={env[k]}' for k in ('processor', 'cpu_isa', 'threads', 'torch') if k in env)
    lines += ['', f'Measured on {machine} by `{result.get("command", "python tools/benchmark.py")}`.']
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--cases', nargs='+', default=DEFAULT_CASES, choices=sorted(CASES))
    parser.add_argument('--mode', choices=['infer', 'train', 'both'], default='both')
    parser.add_argument('--peers', nargs='+', default=PEERS, choices=PEERS)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32', help='autocast dtype')
    parser.add_argument('--channels-last', action='store_true', help='run every implementation channels_last')
    parser.add_argument('--compile', action='store_true',
                        help='also time to_deploy(compile=True) (infer row hrnet_mm-deploy-compiled, compiles for '
                             '~1 min) and torch.compile of the channels_last backbone (train row hrnet_mm-cl-compiled, '
                             'compiles for ~3 min per case and dtype)')
    parser.add_argument('--branch-streams', action='store_true',
                        help='CUDA: also time the deploy model with each HR module\'s branches on CUDA streams of '
                             'their own (infer row hrnet_mm-deploy-streams)')
    parser.add_argument('--cuda-graphs', action='store_true',
                        help='CUDA: also time to_deploy(compile=True) with inductor\'s CUDA graphs (infer row '
                             'hrnet_mm-deploy-cudagraphs)')
    parser.add_argument('--no-channels-last-row', action='store_true',
                        help='leave out the hrnet_mm-cl (channels_last weights) and hrnet_mm-plain (cpu_kernels=False) '
                             'training rows')
    parser.add_argument('--memory', action='store_true',
                        help='CPU peak memory of every row, and the with_cp memory table of --memory-cases')
    parser.add_argument('--memory-cases', nargs='*', default=['w32-mem-b2'], choices=sorted(CASES))
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument('--allocator', choices=['tuned', 'glibc'], default='tuned',
                        help="'tuned': hrnet_mm.deploy.tune_cpu_allocator() for the whole run (all rows); "
                             "'glibc': glibc's default, and the deploy models built with tune_allocator=False")
    parser.add_argument('--allocator-effect', action='store_true',
                        help='instead: time hrnet_mm and its deploy model (infer) with glibc\'s default allocator '
                             'and tuned, each in a fresh process, and print that table')
    parser.add_argument('--allocator-child', nargs=3, metavar=('CASE', 'IMPL', 'ALLOCATOR'), help=argparse.SUPPRESS)
    parser.add_argument('--runtimes', nargs='*', default=[], choices=RUNTIMES,
                        help='CPU infer: also time these runtimes on the ONNX export of the same weights '
                             '(openvino: also at bf16 where the processor has native bfloat16; with --precisions '
                             'int8: each runtime also on its int8 form)')
    parser.add_argument('--precisions', nargs='*', default=[], choices=PRECISIONS,
                        help='CPU infer: also time the deploy model in these precisions (hrnet_mm-deploy-bf16 needs '
                             'native bfloat16; hrnet_mm-deploy-int8 is calibrated on random inputs)')
    parser.add_argument('--block', type=int, default=0,
                        help='calls in a row per implementation and round (default 1; 5 with --runtimes)')
    parser.add_argument('--json', help='also write the rows and the environment as JSON here')
    parser.add_argument('--markdown', metavar='RESULT_JSON',
                        help='instead: print the README\'s speed table from a --json result and exit')
    parser.add_argument('--write-readme', metavar='README', help='with --markdown: also write the table into '
                        'README between its "speed table: begin" and "speed table: end" lines')
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            table = format_markdown(json.load(f))
        print(table)
        if args.write_readme:
            write_readme_table(args.write_readme, table)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator_child:
        name, impl, allocator = args.allocator_child
        print(json.dumps(allocator_child(CASES[name], impl, allocator, args.repeats, args.warmup)))
        return 0
    if args.allocator_effect:
        env = environment(torch.device('cpu'))
        env.pop('allocator')
        print('  '.join(f'{k}={v}' for k, v in env.items()))
        print(f'repeats={args.repeats} warmup={args.warmup} (each row: two fresh processes)')
        results = allocator_effect(args)
        print(format_allocator_table(results))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(dict(environment=env, args=vars(args), allocator_effect=results), f, indent=2)
        return 0
    device = torch.device(args.device)
    if (args.branch_streams or args.cuda_graphs) and device.type != 'cuda':
        parser.error('--branch-streams and --cuda-graphs time CUDA-only rows: use them with --device cuda')
    if args.allocator == 'tuned' and device.type == 'cpu' and not tune_cpu_allocator():
        print('  the allocator could not be tuned (not glibc); timing with its default', file=sys.stderr)
    env = environment(device)
    print('  '.join(f'{k}={v}' for k, v in env.items()))
    print(f'repeats={args.repeats} warmup={args.warmup} dtype={args.dtype} channels_last={args.channels_last}')
    rows: List[Row] = []
    modes = ['infer', 'train'] if args.mode == 'both' else [args.mode]
    failed = []
    for name in args.cases:
        case = CASES[name]
        for mode in (m for m in modes if m in case.modes):
            print(f'  running {name} {mode} ...', file=sys.stderr, flush=True)
            try:
                rows += run_case(case, mode, args, device)
            except Exception as exc:  # noqa: BLE001 - the other cases' rows are still printed
                failed.append(f'{name} {mode}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}')
                print(f'  {failed[-1]}', file=sys.stderr, flush=True)
            if args.json:  # written after every case, so a long run that stops keeps what it measured
                _write_json(args.json, env, args, rows, [])
    print(format_table(rows))
    for case_name in dict.fromkeys(r.case for r in rows if r.grad_err_fp32 is not None):
        print(f'{case_name} train: float32 gradients vs float64, relative L2 (hrnet_mm rows: Winograd F(4x4)): '
              + ', '.join(f'{r.impl} {r.grad_err_fp32:.1e}' for r in rows
                          if r.case == case_name and r.grad_err_fp32 is not None))
    for line in format_phases(rows) + format_runtime_ratios(rows):
        print(line)
    for line in failed:
        print(f'failed: {line}')
    memory_rows: List[Row] = []
    if args.memory:
        for name in args.memory_cases:
            print(f'  running {name} memory (with_cp off/on) ...', file=sys.stderr, flush=True)
            memory_rows += run_memory_case(CASES[name], args)
        print(format_memory_table(memory_rows))
    if args.json:
        _write_json(args.json, env, args, rows, memory_rows)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
