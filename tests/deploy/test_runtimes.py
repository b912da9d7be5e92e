"""hrnet_mm.deploy.runtimes: the int8 form of an ONNX export (quantize_onnx) that the benchmark's runtime rows run,
checked against onnxruntime's own quantizer arithmetic and against hrnet_mm's int8 deploy model."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_EXTRA, randomize_

from hrnet_mm.deploy import to_deploy
from hrnet_mm.deploy.precision import Int8Conv2d
from hrnet_mm.deploy.runtimes import OnnxRuntimeModel, OpenVinoModel, openvino_available, quantize_onnx
from hrnet_mm.models import HRNet

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

SHAPE = (1, 3, 64, 96)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A tiny HRNet, its ONNX export, the export's int8 form and the calibration inputs."""
    from hrnet_mm.deploy.export import export_onnx

    folder = tmp_path_factory.mktemp('int8')
    torch.manual_seed(0)
    model = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    path, int8_path = str(folder / 'tiny.onnx'), str(folder / 'tiny-int8.onnx')
    export_onnx(model, path, SHAPE, dynamic=False, check=False, exporter='torchscript')
    calibration = [torch.randn(*SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    quantize_onnx(path, int8_path, calibration)
    return model, path, int8_path, calibration


def _initializers(graph) -> dict:
    return {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}


def test_int8_file_quantizes_every_convolution_per_output_channel(exported):
    model, _, int8_path, _ = exported
    graph = onnx.load(int8_path).graph
    inits = _initializers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    convs = [n for n in graph.node if n.op_type == 'Conv']
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    for conv in convs:
        act, weight = producer[conv.input[0]], producer[conv.input[1]]
        assert act.op_type == weight.op_type == 'DequantizeLinear', conv.name
        assert inits[weight.input[0]].dtype == np.int8
        assert inits[weight.input[1]].shape == (inits[weight.input[0]].shape[0], )  # one scale per output channel
        quantized_act = producer[act.input[0]]
        assert quantized_act.op_type == 'QuantizeLinear'
        assert inits[quantized_act.input[2]].dtype == np.uint8


def test_int8_file_has_the_scales_of_hrnet_mm_int8_deploy(exported):
    """The same scheme as to_deploy(precision='int8'): for the stem convolution, onnxruntime's scales and zero point
    of the input (min/max over the same calibration inputs, widened to 0) and its per-channel weight scales (max |w|
    / 127, on the BN-folded weight) equal Int8Conv2d's, within float32 rounding of the two BN foldings. (Where the
    processor has no VNNI, Int8Conv2d divides by 63 instead; the file stays 8-bit, for whatever runs it.)"""
    model, _, int8_path, calibration = exported
    graph = onnx.load(int8_path).graph
    inits = _initializers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    stem = next(n for n in graph.node if n.op_type == 'Conv')
    act, weight = producer[producer[stem.input[0]].input[0]], producer[stem.input[1]]
    ours = next(m for m in to_deploy(model, precision='int8', calibration=calibration).modules()
                if isinstance(m, Int8Conv2d))
    assert float(inits[act.input[1]]) == pytest.approx(ours.x_scale, rel=1e-6)
    assert int(inits[act.input[2]]) == ours.x_zero_point
    torch.testing.assert_close(torch.from_numpy(inits[weight.input[1]]), ours.w_scale * ours.w_max / 127,
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize('runtime', ['onnxruntime', 'openvino'])
def test_runtimes_run_the_int8_file_close_to_float32(exported, runtime):
    """Both runtimes load the int8 file, with outputs near the float32 model's: within the benchmark's tolerance
    for the runtimes' int8 rows (uint8 between all operators: about twice hrnet_mm's int8 error on this random
    model; a broken graph is off by the whole output range)."""
    if runtime == 'openvino' and not openvino_available():
        pytest.skip('OpenVINO is not installed (requirements/benchmark.txt)')
    model, _, int8_path, _ = exported
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        ref = model(x)
    ref = list(ref) if isinstance(ref, (list, tuple)) else [ref]
    runner = OnnxRuntimeModel(int8_path, 1, 'int8') if runtime == 'onnxruntime' else OpenVinoModel(
        int8_path, 1, 'int8', SHAPE)
    outs = runner(x)
    assert runner.precision == 'int8' and len(outs) == len(ref)
    for out, r in zip(outs, ref):
        assert out.shape == r.shape
        err = ((out - r).abs().max() / r.abs().max()).item()
        assert 0 < err < 0.25


def test_quantize_onnx_needs_calibration_inputs(exported, tmp_path):
    _, path, _, _ = exported
    with pytest.raises(ValueError, match='calibration data is empty'):
        quantize_onnx(path, str(tmp_path / 'out.onnx'), [])
    assert list(tmp_path.iterdir()) == []


def test_runtime_wrappers_refuse_unknown_precisions(exported):
    _, path, _, _ = exported
    with pytest.raises(ValueError, match="precision must be 'f32' or 'int8'"):
        OnnxRuntimeModel(path, 1, 'bf16')
    with pytest.raises(ValueError, match="precision must be 'f32', 'bf16' or 'int8'"):
        OpenVinoModel(path, 1, 'fp16')
