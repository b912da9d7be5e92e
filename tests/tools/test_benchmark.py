"""tools/benchmark.py helpers: CPU peak memory, the gradient check of the channels_last training row, the
allocator table."""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
from conftest import ROOT, TINY_EXTRA, randomize_

from hrnet_mm.deploy.runtimes import native_int8

sys.path.insert(0, os.path.join(ROOT, 'tools'))
benchmark = pytest.importorskip('benchmark')


def test_peak_cpu_memory_counts_a_step_allocation():
    def step():
        a = torch.ones(4 * 2 ** 20 // 4)  # 4 MiB
        b = a * 2  # another 4 MiB while a is alive
        del a, b
    peak = benchmark.peak_cpu_memory_mb(step)
    assert 7.9 < peak < 9


def test_channels_last_row_has_the_same_gradients():
    from hrnet_mm.models import HRNet
    ours = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA)))
    proto = HRNet(extra=copy.deepcopy(TINY_EXTRA))
    proto.load_state_dict(ours.state_dict())
    proto = proto.to(memory_format=torch.channels_last)
    assert proto.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    errs = benchmark.check_gradients({'hrnet_mm': ours, 'hrnet_mm-cl': proto}, torch.randn(2, 3, 64, 64))
    assert errs['hrnet_mm-cl'] < 1e-10
    assert ours.conv1.weight.dtype == proto.conv1.weight.dtype == torch.float32


def test_memory_table_and_rows():
    rows = [benchmark.Row('c', 'train', 'hrnet_mm', 1000.0, 1.0, 100.0, 1.0),
            benchmark.Row('c', 'train', 'hrnet_mm-with_cp', 1200.0, 1.0, 40.0, 0.4)]
    text = benchmark.format_memory_table(rows)
    assert 'hrnet_mm-with_cp' in text and '0.40x' in text
    rows[0].prep_s = 2.5
    assert '2.5' in benchmark.format_table(rows)


def test_train_step_phases_are_timed_and_compared_with_the_fastest_peer():
    from hrnet_mm.models import HRNet
    model = HRNet(extra=copy.deepcopy(TINY_EXTRA))
    phases = []
    step = benchmark.make_step('hrnet_mm', model, torch.randn(1, 3, 64, 64), 'train', None, torch.device('cpu'),
                               phases)
    before = [p.detach().clone() for p in model.parameters()]
    step()
    step()
    assert len(phases) == 2 and all(len(p) == 3 and min(p) > 0 for p in phases)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # the optimizer stepped
    rows = [benchmark.Row('c', 'train', 'mmdet', 100.0, 10.0, None, phase_ms=(40.0, 50.0, 10.0)),
            benchmark.Row('c', 'train', 'timm', 120.0, 8.3, None, phase_ms=(30.0, 80.0, 10.0)),
            benchmark.Row('c', 'train', 'hrnet_mm', 80.0, 12.5, None, phase_ms=(20.0, 50.0, 10.0)),
            benchmark.Row('d', 'train', 'hrnet_mm', 80.0, 12.5, None)]
    lines = benchmark.format_phases(rows)
    assert len(lines) == 1 and lines[0].startswith('c train phases')
    assert 'vs mmdet' in lines[0] and 'hrnet_mm 20.0/50.0/10.0 (2.00x/1.00x/1.00x)' in lines[0]
    assert 'timm 30.0/80.0/10.0,' in lines[0]


@pytest.mark.skipif(__import__('platform').libc_ver()[0] != 'glibc', reason='tune_cpu_allocator is for glibc')
def test_allocator_child_times_the_model_and_counts_faults():
    case = benchmark.Case('tiny', 'w18_small', 64, 64, 1)
    for impl in ('hrnet_mm', 'hrnet_mm-deploy'):
        res = benchmark.allocator_child(case, impl, 'tuned', repeats=2, warmup=1)
        assert res['median_ms'] > 0 and res['faults_per_call'] >= 0
    text = benchmark.format_allocator_table([dict(case='tiny', impl='hrnet_mm',
                                                  glibc=dict(median_ms=10.0, faults_per_call=900.0),
                                                  tuned=dict(median_ms=8.0, faults_per_call=0.0))])
    assert '1.25x' in text and '900' in text


def test_a_peer_that_fails_on_the_input_is_left_out_not_fatal(capsys):
    from hrnet_mm.models import HRNet

    class Crashes(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError('The size of tensor a (334) must match the size of tensor b (336)')

    impls = {'hrnet_mm': HRNet(extra=copy.deepcopy(TINY_EXTRA)), 'mmdet': Crashes()}
    errs = benchmark.check_agreement(impls, torch.randn(1, 3, 64, 80))
    assert list(impls) == ['hrnet_mm'] and 'mmdet' not in errs
    assert 'skipping mmdet: RuntimeError: The size of tensor a (334)' in capsys.readouterr().err
    assert benchmark.CASES['w32-det-b1'].width % 32 == 0  # what mmdet's preprocessor feeds the backbone


def test_environment_names_the_processor_and_its_vector_isa():
    # The ratios depend on the CPU (oneDNN's AVX2 and AVX-512 kernels differ), so every table says which it was.
    env = benchmark.environment(torch.device('cpu'))
    assert env['processor'] and env['processor'] == benchmark.processor_name()
    assert env['cpu_isa'] == torch.backends.cpu.get_cpu_capability()
    assert env['int8_weights'] == ('8-bit' if native_int8() else '7-bit(no_VNNI)')  # Int8Conv2d.w_max
    if os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        if names:
            assert env['processor'] == ' '.join(names[0].split())


def test_branch_streams_patch_every_hr_module_and_keep_the_cpu_forward():
    # On a GPU the branches run on streams of their own (tests/deploy/test_cuda.py); elsewhere the plain forward runs.
    from hrnet_mm.deploy import to_deploy
    from hrnet_mm.models import HRModule, HRNet
    model = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    plain = to_deploy(model, fuse=False)
    streams = benchmark.use_branch_streams(to_deploy(model, fuse=False))
    hr_modules = [m for m in streams.modules() if isinstance(m, HRModule)]
    assert len(hr_modules) == 5 and all('forward' in vars(m) for m in hr_modules)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for a, b in zip(streams(x), plain(x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize('flag', ['--branch-streams', '--cuda-graphs'])
def test_cuda_only_rows_need_a_cuda_device(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.main(['--device', 'cpu', flag, '--cases', 'w32-pose-b1'])
    assert exc.value.code == 2
    assert 'CUDA-only rows' in capsys.readouterr().err


def test_runtime_rows_agree_with_hrnet_mm_and_are_compared_with_the_deploy_model(tmp_path, monkeypatch):
    """onnxruntime on the ONNX export of the same weights: outputs within 1e-4 of hrnet_mm's; the ratio line under
    the table; the exported file is removed once the sessions are open. (OpenVINO runs in a subprocess, below.)"""
    import tempfile

    from hrnet_mm.models import HRNet

    case = benchmark.Case('tiny', 'w18_small', 64, 96, 1)
    model = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval()
    prep = {}
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
    impls = benchmark.build_runtimes(model, case, ['onnxruntime', 'onnxruntime-int8'], prep)
    assert list(impls) == ['onnxruntime', 'onnxruntime-int8'] and prep['onnxruntime-int8'] > prep['onnxruntime'] > 0
    assert [m.precision for m in impls.values()] == ['f32', 'int8']
    assert list(tmp_path.iterdir()) == []
    impls['hrnet_mm'] = model
    errs = benchmark.check_agreement(impls, torch.randn(1, 3, 64, 96))
    assert errs['onnxruntime'] < 1e-4
    assert 1e-4 < errs['onnxruntime-int8'] < benchmark.RUNTIME_INT8_TOL
    rows = [benchmark.Row('tiny', 'infer', 'hrnet_mm-deploy', 10.0, 100.0, None),
            benchmark.Row('tiny', 'infer', 'onnxruntime', 15.0, 66.7, None),
            benchmark.Row('tiny', 'infer', 'openvino', 12.0, 83.3, None),
            benchmark.Row('tiny', 'infer', 'openvino-bf16', 8.0, 125.0, None),
            benchmark.Row('tiny', 'infer', 'onnxruntime-int8', 6.0, 166.7, None),
            benchmark.Row('tiny', 'infer', 'openvino-int8', 2.0, 500.0, None),
            benchmark.Row('tiny', 'infer', 'hrnet_mm-deploy-bf16', 10.0, 100.0, None),
            benchmark.Row('tiny', 'infer', 'hrnet_mm-deploy-int8', 4.0, 250.0, None)]
    (line, ) = benchmark.format_runtime_ratios(rows)
    assert line == ('tiny infer: hrnet_mm-deploy is 1.20x the fastest runtime at fp32 (openvino); hrnet_mm-deploy-bf16 '
                    'is 0.80x the fastest runtime at bf16 (openvino-bf16); hrnet_mm-deploy-int8 is 2.50x '
                    'hrnet_mm-deploy; hrnet_mm-deploy-int8 is 0.50x the fastest runtime at int8 (openvino-int8)')
    assert benchmark.runtime_rows(['onnxruntime', 'openvino'], ['int8'])[-2:] == ['onnxruntime-int8', 'openvino-int8']
    assert not any('int8' in r for r in benchmark.runtime_rows(['onnxruntime', 'openvino'], ['bf16']))


RUN_CASE = """
import json, sys
from argparse import Namespace
from dataclasses import asdict
import torch
sys.path.insert(0, sys.argv[1])
import benchmark
from hrnet_mm.deploy.runtimes import native_bf16, openvino_available
runtimes = ['onnxruntime'] + (['openvino'] if openvino_available() else [])
precisions = ['int8'] + (['bf16'] if native_bf16() else [])
args = Namespace(compile=False, peers=['mmpose'], branch_streams=False, cuda_graphs=False, runtimes=runtimes,
                 no_channels_last_row=True, allocator='tuned', channels_last=False, dtype='fp32', warmup=1,
                 block=0, repeats=5, memory=False, precisions=precisions)
rows = benchmark.run_case(benchmark.Case('tiny', 'w18_small', 64, 96, 1), 'infer', args, torch.device('cpu'))
expected = benchmark.runtime_rows(runtimes, precisions) + ['hrnet_mm-deploy-' + p for p in precisions]
print(json.dumps(dict(rows=[asdict(r) for r in rows], expected=expected,
                      ratios=benchmark.format_runtime_ratios(rows))))
"""


def test_an_infer_case_with_the_runtimes_times_them_in_blocks():
    """run_case with onnxruntime and OpenVINO (where installed) beside hrnet_mm, the peer and the deploy model in
    fp32, int8 and bf16 (where native); in a subprocess: OpenVINO's thread pool, once loaded, makes a later test's
    SIGINT to the pytest process crash it."""
    import json
    import subprocess

    proc = subprocess.run([sys.executable, '-c', RUN_CASE, os.path.join(ROOT, 'tools')], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='2'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = result['rows']
    names = [r['impl'] for r in rows]
    assert sorted(names) == sorted(['hrnet_mm', 'mmpose', 'hrnet_mm-deploy'] + result['expected'])
    for r in rows:
        assert r['median_ms'] > 0 and r['rel_err'] is not None
        assert r['rel_err'] < benchmark.tolerance(r['impl'], 1e-4), r
    assert result['ratios'][0].startswith('tiny infer: hrnet_mm-deploy is ')
    assert 'hrnet_mm-deploy-int8 is ' in result['ratios'][0] and 'the fastest runtime at int8' in result['ratios'][0]


def test_int8_deploy_tolerance_follows_the_weight_width(monkeypatch):
    """Without VNNI the int8 deploy model's weights take 7 bits (twice the step), so its agreement check with the
    float32 model allows twice the error; the runtimes' int8 files stay 8-bit whatever the processor."""
    monkeypatch.setattr(benchmark, 'int8_weight_max', lambda: 127)
    assert benchmark.tolerance('hrnet_mm-deploy-int8', 1e-4) == pytest.approx(1e-1)
    monkeypatch.setattr(benchmark, 'int8_weight_max', lambda: 63)
    assert benchmark.tolerance('hrnet_mm-deploy-int8', 1e-4) == pytest.approx(1e-1 * 127 / 63)
    assert benchmark.tolerance('openvino-int8', 1e-4) == benchmark.RUNTIME_INT8_TOL
    assert benchmark.tolerance('hrnet_mm-deploy', 1e-4) == 1e-4
