"""The inference runtimes users deploy to, on the ONNX export of the same weights: onnxruntime and OpenVINO.

Each wrapper is called with a float32 ``(N, C, H, W)`` tensor (or array) and returns its outputs as tensors, so
``tools/benchmark.py`` checks and times it like a module. Both are set up for a fair CPU comparison in one
process: as many intra-op threads as asked, one inference at a time, and no worker spinning after a call
(onnxruntime spins its thread pool by default, which takes the cores from whatever runs next).

* :class:`OnnxRuntimeModel`: onnxruntime's CPU execution provider with all graph optimisations.
* :class:`OpenVinoModel`: OpenVINO's CPU plugin, latency hint, one stream, with an explicit inference precision
  (``'f32'``, or ``'bf16'`` where the processor has native bfloat16: :func:`native_bf16`). OpenVINO is an
  optional dependency (``requirements/benchmark.txt``).
* :func:`quantize_onnx`: the int8 form of an exported file that both runtimes run in int8, made by onnxruntime's
  static quantization with the scheme of ``to_deploy(precision='int8')`` (int8 weights per output channel, uint8
  activations with the min/max range of the calibration inputs), as quantize/dequantize pairs (QDQ).
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The processor's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return frozenset(line.split(':', 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """Whether the processor computes in bfloat16 natively (AVX512_BF16 or AMX-BF16)."""
    return bool({'avx512_bf16', 'amx_bf16'} & cpu_flags())


def native_int8() -> bool:
    """Whether oneDNN's int8 convolutions accumulate uint8 x int8 products in int32 on this processor: an x86 one
    with a dot-product instruction (AVX512_VNNI, AVX_VNNI or AMX-INT8), or one of another architecture. Without
    one an x86 processor multiplies with ``vpmaddubsw``, which adds each pair of products in int16 and saturates
    where ``|q_x1 w_1 + q_x2 w_2|`` exceeds 32767 (uint8 activations with int8 weights above 64)."""
    if platform.machine().lower() not in ('x86_64', 'amd64', 'i386', 'i686', 'x86'):
        return True
    return bool({'avx512_vnni', 'avx_vnni', 'amx_int8'} & cpu_flags())


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _numpy(x: Array) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


CALIBRATION_STRIDE = 4  # calibration inputs whose intermediate tensors quantize_onnx holds at once


def quantize_onnx(path: str, out: str, calibration: Sequence[Union[Array, Dict[str, Array]]]) -> None:
    """Writes to ``out`` the int8 form of the float32 ONNX file ``path``, as a user of the runtimes makes it:
    onnxruntime's pre-processing (shape inference, graph clean-up), then its static quantization in QDQ form with
    int8 weights, symmetric per output channel, and uint8 activations whose ranges are the min/max that each tensor
    took over ``calibration``. onnxruntime and OpenVINO both run the result on their int8 kernels. The file's
    metadata (the runtime recipe of a whole-model export) is kept.

    Args:
        path: The float32 ONNX file.
        out: Where to write the int8 file (written under a temporary name first).
        calibration: Inputs like those the model will see: arrays or tensors for the file's first input, or dicts
            from input names to arrays (a detector graph's ``input`` and ``img_shape``).

    Raises:
        ValueError: ``calibration`` is empty.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = onnx.load(path, load_external_data=False)
    first = source.graph.input[0].name
    items = [{k: np.ascontiguousarray(_numpy(v) if k == first else v) for k, v in item.items()}
             if isinstance(item, dict) else {first: _numpy(item)} for item in calibration]
    if not items:
        raise ValueError('quantize_onnx: the calibration data is empty; pass inputs like those the model will see')

    class Reader(CalibrationDataReader):
        """The calibration inputs, in ranges of ``stride`` (onnxruntime keeps every tensor of a range in memory)."""

        def __init__(self) -> None:
            self.set_range(0, len(items))

        def __len__(self) -> int:
            return len(items)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.items = iter(items[start_index:end_index])

        def get_next(self):
            return next(self.items, None)

    stride = max(d for d in range(1, CALIBRATION_STRIDE + 1) if len(items) % d == 0)  # onnxruntime needs a divisor

    tmp = out + '.part'
    with tempfile.TemporaryDirectory(prefix='hrnet_mm_quantize_') as folder:
        prepared = os.path.join(folder, 'prepared.onnx')
        source_path = os.path.abspath(path)
        with contextlib.chdir(folder):  # a failed symbolic shape inference leaves its model in the working folder
            try:
                quant_pre_process(source_path, prepared)
            except Exception:  # noqa: BLE001 - symbolic shapes of a dynamic graph or of an operator it does not know
                quant_pre_process(source_path, prepared, skip_symbolic_shape=True)
        try:
            quantize_static(prepared, tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, extra_options={'CalibStridedMinMax': stride})
            if source.metadata_props:
                model = onnx.load(tmp)
                have = {p.key for p in model.metadata_props}
                model.metadata_props.extend(p for p in source.metadata_props if p.key not in have)
                onnx.save(model, tmp)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


class OnnxRuntimeModel:
    """An ONNX file in onnxruntime (CPU), without spinning threads.

    Args:
        path: The ONNX file (one input).
        threads: Intra-op threads (inter-op: 1, sequential execution).
        precision: What the file computes in, for the reports: ``'f32'``, or ``'int8'`` for a file made by
            :func:`quantize_onnx`.
    """

    runtime = 'onnxruntime'

    def __init__(self, path: str, threads: int, precision: str = 'f32') -> None:
        import onnxruntime as ort

        if precision not in ('f32', 'int8'):
            raise ValueError(f"OnnxRuntimeModel: precision must be 'f32' or 'int8', got {precision!r}")

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        options.add_session_config_entry('session.inter_op.allow_spinning', '0')
        self.session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        self.input_name = self.session.get_inputs()[0].name
        self.precision = precision

    def __call__(self, x: Array) -> List[torch.Tensor]:
        return [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: _numpy(x)})]

    def eval(self) -> 'OnnxRuntimeModel':  # the benchmark treats every row as a module
        return self


class OpenVinoModel:
    """An ONNX file compiled by OpenVINO for the CPU.

    Args:
        path: The ONNX file (one input).
        threads: ``INFERENCE_NUM_THREADS``.
        precision: ``'f32'`` or ``'bf16'``: the ``INFERENCE_PRECISION_HINT`` (OpenVINO's own default on a processor
            with native bfloat16 is bf16); ``'int8'``: a file made by :func:`quantize_onnx`, whose quantized
            convolutions OpenVINO runs in int8 and the rest in float32.
        shape: Compile for this static input shape (OpenVINO plans better for a known shape), or keep the file's
            dynamic dimensions with None.

    Raises:
        ImportError: OpenVINO is not installed.
        ValueError: ``precision='bf16'`` on a processor without native bfloat16.
    """

    runtime = 'openvino'

    def __init__(self, path: str, threads: int, precision: str = 'f32',
                 shape: Optional[Sequence[int]] = None) -> None:
        if precision not in ('f32', 'bf16', 'int8'):
            raise ValueError(f"OpenVinoModel: precision must be 'f32', 'bf16' or 'int8', got {precision!r}")
        if precision == 'bf16' and not native_bf16():
            raise ValueError('OpenVinoModel: bf16 needs a processor with AVX512_BF16 or AMX-BF16; this one has '
                             'neither')
        try:
            import openvino as ov
        except ImportError:
            raise ImportError('OpenVINO is not installed: pip install -r requirements/benchmark.txt') from None
        core = ov.Core()
        model = core.read_model(path)
        if shape is not None:
            model.reshape(list(shape))
        config = {'INFERENCE_NUM_THREADS': int(threads), 'NUM_STREAMS': 1, 'PERFORMANCE_HINT': 'LATENCY',
                  'INFERENCE_PRECISION_HINT': 'f32' if precision == 'int8' else precision}
        self.compiled = core.compile_model(model, 'CPU', config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def __call__(self, x: Array) -> List[torch.Tensor]:
        results = self.request.infer([_numpy(x)])
        return [torch.from_numpy(np.array(results[out])) for out in self.compiled.outputs]

    def eval(self) -> 'OpenVinoModel':
        return self
