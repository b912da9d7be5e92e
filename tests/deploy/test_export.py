"""Deployment paths: ONNX export run by onnxruntime (dynamic and odd sizes), TorchScript, torch.compile, and
the ``tools/deploy/export_onnx.py`` CLI. Tiny models on CPU."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import ROOT, TINY_EXTRA, randomize_, rel_err

from hrnet_mm.deploy.export import BackboneWithNeck, ExportError, check_onnx, export_onnx, script
from hrnet_mm.models import HRNet
from hrnet_mm.models.cls_neck import HRFuseScales
from hrnet_mm.models.necks import HRNetV2Neck, HRNetV2pNeck

CHANNELS = [8, 16, 32, 64]  # the branches of TINY_EXTRA
ODD = [(2, 3, 97, 130), (1, 3, 160, 96)]
CLI = os.path.join(ROOT, 'tools', 'deploy', 'export_onnx.py')
SEG_DEMO = os.path.join(ROOT, 'configs', 'demo', 'fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py')
POSE_DEMO = os.path.join(ROOT, 'configs', 'demo', 'td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py')


def tiny(**kwargs) -> HRNet:
    return randomize_(HRNet(extra=TINY_EXTRA, **kwargs)).eval()


def _eager(model, x):
    with torch.no_grad():
        out = model(x)
    return [out] if isinstance(out, torch.Tensor) else list(out)


# ----------------------------------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize('kwargs', [{}, dict(upsample_cfg=dict(mode='bilinear')), dict(out_indices=(0,))],
                         ids=['nearest', 'bilinear', 'v1'])
def test_onnx_backbone_follows_dynamic_odd_sizes(tmp_path, kwargs):
    model = tiny(**kwargs)
    path = str(tmp_path / 'hrnet.onnx')
    report = export_onnx(model, path, (1, 3, 64, 64), exporter='torchscript', check_shapes=ODD)
    assert report.passed and set(report.errors) == {(1, 3, 64, 64), *ODD}
    assert report.max_error < 1e-4 and report.folded_bn > 0 and report.opset == 17
    assert len(report.output_names) == len(model.out_indices)
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 'height', 'width']
    # the upsampling follows the input: every branch has PyTorch's size at an odd input
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    x = torch.randn(1, 3, 97, 130)
    got = session.run(None, {'input': x.numpy()})
    ref = _eager(model, x)
    assert [g.shape for g in got] == [tuple(r.shape) for r in ref]
    assert max(rel_err(torch.from_numpy(g), r) for g, r in zip(got, ref)) < 1e-4


@pytest.mark.parametrize('neck', [lambda: HRNetV2Neck(CHANNELS, 12),
                                  lambda: HRNetV2pNeck(CHANNELS, 16, num_outs=3, pooling_type='MAX')],
                         ids=['v2-mix', 'v2p-max'])
def test_onnx_backbone_with_neck(tmp_path, neck):
    model = BackboneWithNeck(tiny(), randomize_(neck(), seed=1)).eval()
    report = export_onnx(model, str(tmp_path / 'm.onnx'), (1, 3, 64, 64), exporter='torchscript',
                         check_shapes=ODD)
    assert report.passed and report.max_error < 1e-4
    assert report.output_shapes == [tuple(o.shape) for o in _eager(model, torch.zeros(1, 3, 64, 64))]


def test_onnx_dynamo_exporter(tmp_path):
    pytest.importorskip('onnxscript')
    model = BackboneWithNeck(tiny(), randomize_(HRNetV2pNeck(CHANNELS, 16, num_outs=2), seed=1)).eval()
    path = str(tmp_path / 'm.onnx')
    report = export_onnx(model, path, (1, 3, 64, 64), exporter='dynamo', check_shapes=ODD[:1])
    assert report.passed and report.max_error < 1e-4 and report.opset == 17
    assert not os.path.exists(path + '.data')  # weights inside the file


def test_onnx_unfolded_static_and_check_onnx(tmp_path):
    model = tiny()
    path = str(tmp_path / 'static.onnx')
    report = export_onnx(model, path, (1, 3, 64, 96), exporter='torchscript', dynamic=False, fold_bn=False)
    assert report.folded_bn == 0 and report.passed
    with pytest.raises(ValueError, match='static export'):
        export_onnx(model, path, (1, 3, 64, 96), exporter='torchscript', dynamic=False, check_shapes=ODD)
    # check_onnx sees a model that differs from the file
    other = randomize_(HRNet(extra=TINY_EXTRA), seed=5).eval()
    assert check_onnx(path, other, [torch.randn(1, 3, 64, 96)])[0] > 1e-2


def test_onnx_bad_arguments(tmp_path):
    model = tiny()
    path = str(tmp_path / 'm.onnx')
    with pytest.raises(ValueError, match='at least 32'):
        export_onnx(model, path, (1, 3, 16, 64), exporter='torchscript')
    with pytest.raises(ValueError, match='at least 17'):
        export_onnx(model, path, (1, 3, 64, 64), opset=16)
    with pytest.raises(ValueError, match='exporter must be one of'):
        export_onnx(model, path, (1, 3, 64, 64), exporter='tensorrt')
    with pytest.raises(ExportError, match='differs from PyTorch by more than'):
        export_onnx(model, path, (1, 3, 64, 64), exporter='torchscript', tolerance=1e-12)


# ----------------------------------------------------------------------------------------------- TorchScript
@pytest.mark.parametrize('kwargs', [{}, dict(out_indices=(0,), upsample_cfg=dict(mode='bilinear'),
                                             norm_cfg=dict(type='GN', num_groups=4))], ids=['default', 'v1-gn'])
def test_script_backbone_bit_identical_and_saved(tmp_path, kwargs):
    model = tiny(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        scripted = torch.jit.script(model)
    assert list(scripted.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 97, 130)
    ref = _eager(model, x)
    with torch.no_grad():
        out = scripted(x)
    assert isinstance(out, list) and len(out) == len(ref)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    path = str(tmp_path / 'hrnet.pt')
    torch.jit.save(scripted, path)
    loaded = torch.jit.load(path)
    with torch.no_grad():
        again = loaded(x)
    assert all(torch.equal(a, b) for a, b in zip(again, ref))


@pytest.mark.parametrize('neck', [lambda: HRNetV2Neck(CHANNELS, 12, norm_cfg=dict(type='GN', num_groups=4)),
                                  lambda: HRNetV2Neck(CHANNELS),
                                  lambda: HRNetV2pNeck(CHANNELS, 16, num_outs=3, pooling_type='MAX', with_cp=True),
                                  lambda: HRNetV2pNeck(CHANNELS, 16, norm_cfg=dict(type='BN')),
                                  lambda: HRFuseScales(CHANNELS, 32),
                                  lambda: HRFuseScales(CHANNELS, 32, layout='official')],
                         ids=['v2-gn', 'v2-concat', 'v2p-max', 'v2p-bn', 'cls', 'cls-official'])
def test_script_necks_bit_identical(neck):
    neck = randomize_(neck(), seed=1).eval()
    feats = _eager(tiny(), torch.randn(2, 3, 97, 130))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        scripted = torch.jit.script(neck)
    assert list(scripted.state_dict()) == list(neck.state_dict())
    ref = _eager(neck, feats)
    with torch.no_grad():
        out = scripted(feats)
    assert len(out) == len(ref) and all(torch.equal(a, b) for a, b in zip(out, ref))


def test_script_backbone_with_neck_folded(tmp_path):
    model = BackboneWithNeck(tiny(), randomize_(HRNetV2pNeck(CHANNELS, 16, num_outs=2), seed=1)).eval()
    scripted = script(model, fold_bn=True)
    path = str(tmp_path / 'hrnet_fpn.pt')
    torch.jit.save(scripted, path)
    x = torch.randn(1, 3, 65, 71)
    with torch.no_grad():
        out = torch.jit.load(path)(x)
    ref = _eager(model, x)
    assert len(out) == 2 and max(rel_err(a, b) for a, b in zip(out, ref)) < 1e-4
    assert all(not m.training for m in model.modules())  # the original is untouched (eval as given)


def test_script_rejects_too_many_stages():
    from hrnet_mm.models.arch import StageSpec
    spec = [StageSpec(1, 'BOTTLENECK', (1,), (4,))] + [StageSpec(1, 'BASIC', (1,) * k, (4,) * k) for k in range(2, 8)]
    with pytest.raises(RuntimeError, match='up to 6 stages'):
        torch.jit.script(HRNet(arch=spec))


# ----------------------------------------------------------------------------------------------- torch.compile
def test_compile_fullgraph_without_graph_breaks():
    model = tiny()
    compiled = torch.compile(model, fullgraph=True, backend='eager')  # traces the whole forward, or raises
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = compiled(x)
    assert max(rel_err(a, b) for a, b in zip(out, _eager(model, x))) < 1e-4


@pytest.mark.slow
def test_compile_fullgraph_inductor():
    model = tiny()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = compiled(x)
    assert max(rel_err(a, b) for a, b in zip(out, _eager(model, x))) < 1e-4


# ----------------------------------------------------------------------------------------------- CLI
def _cli(cwd, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='2')
    return subprocess.run([sys.executable, CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_cli_exports_backbone_and_neck_with_checkpoint(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, 'tools', 'analysis'))
    from _common import build_model, load_config

    model = randomize_(build_model(load_config(SEG_DEMO)), seed=3).eval()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, tmp_path / 'fcn.pth')
    proc = _cli(tmp_path, SEG_DEMO, 'fcn.pth', '--out', 'fcn.onnx', '--shape', '64', '--part', 'backbone+neck',
                '--exporter', 'torchscript', '--check-sizes', '97x130')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(':')[0] for line in lines] == ['config', 'model', 'weights', 'fold BN', 'export',
                                                      'check', 'check 1x3x64x64', 'check 2x3x97x130', 'done']
    assert 'HRNet + HRNetV2Neck' in lines[1] and 'weights: ' in lines[2] and 'tensors from fcn.pth' in lines[2]
    # the file holds the checkpoint's weights
    x = torch.randn(1, 3, 97, 130)
    got = ort.InferenceSession(str(tmp_path / 'fcn.onnx'), providers=['CPUExecutionProvider']).run(
        None, {'input': x.numpy()})
    ref = _eager(BackboneWithNeck(model.backbone, model.neck), x)
    assert len(got) == 1 and rel_err(torch.from_numpy(np.asarray(got[0])), ref[0]) < 1e-4


@pytest.mark.parametrize('args,message', [
    (['missing.py', '--out', 'm.onnx', '--shape', '64'], 'config not found: missing.py'),
    ([SEG_DEMO, 'missing.pth', '--out', 'm.onnx', '--shape', '64'], 'checkpoint not found: missing.pth'),
    ([SEG_DEMO, '--out', 'm.onnx', '--shape', '16', '64'], '--shape 16x64: height and width must be at least 32'),
    ([SEG_DEMO, '--out', 'm.onnx', '--shape', '64', 'x'], "argument --shape: invalid int value: 'x'"),
    ([SEG_DEMO, '--out', 'm.onnx', '--shape', '1', '2', '3'], '--shape takes H or H W, got 3 numbers'),
    ([SEG_DEMO, '--out', 'm.onnx', '--shape', '64', '--check-sizes', '97-130'], 'takes HxW entries'),
    ([SEG_DEMO, '--out', 'm.onnx', '--shape', '64', '--opset', '11'], '--opset 11: must be at least 17'),
    ([SEG_DEMO, 'bad.pth', '--out', 'm.onnx', '--shape', '64'], 'cannot load checkpoint bad.pth'),
    ([POSE_DEMO, '--out', 'm.onnx', '--shape', '64', '--part', 'backbone+neck'], 'has no neck; use --part backbone'),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    (tmp_path / 'bad.pth').write_text('not a checkpoint')
    proc = _cli(tmp_path, *args, *([] if '--part' in args else ['--part', 'backbone']))
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith('export_onnx.py: error: ') and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'm.onnx').exists()
