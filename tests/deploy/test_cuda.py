"""hrnet_mm on a CUDA GPU: the deploy model, bf16 autocast and the benchmark's CUDA-only rows.

Skipped on machines without a GPU (the project's CI); tools/gpu_check.sh runs them on one. Tolerances: 1e-4
relative in float32, as on the CPU (BN folding changes the order of a few operations; cuDNN's TF32 convolutions,
on by default in PyTorch, are turned off here, since TF32 keeps only 10 bits of mantissa); 3e-2 relative for bf16
autocast against the float32 module (bf16 keeps 8 bits, and the error grows over the network's depth); 1e-6 for
the branch-streams model, which runs the same kernels as the plain one, only on other streams.
"""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
from conftest import ROOT, TINY_EXTRA, randomize_, rel_err

from hrnet_mm.deploy import to_deploy
from hrnet_mm.models import HRNet, HRNetV2Neck

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]

sys.path.insert(0, os.path.join(ROOT, 'tools'))


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _model():
    return randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA))).eval().cuda()


def _outs(model, x):
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


@pytest.mark.parametrize('fuse', [True, False])
def test_deploy_model_on_cuda_equals_the_module(fuse):
    model = _model()
    x = torch.randn(2, 3, 96, 80, device='cuda')
    ref = _outs(model, x)
    fast = to_deploy(model, fuse=fuse)
    outs = _outs(fast, x.contiguous(memory_format=torch.channels_last))
    assert len(outs) == len(ref) == 4
    for a, b in zip(outs, ref):
        assert a.is_cuda and rel_err(a, b) < 1e-4


def test_bf16_autocast_channels_last_is_close_to_float32():
    model = _model()
    neck = HRNetV2Neck(in_channels=model.out_channels, out_channels=32).eval().cuda()
    x = torch.randn(2, 3, 128, 96, device='cuda')
    with torch.no_grad():
        ref = neck(model(x))
        fast_bb, fast_neck = to_deploy(model), to_deploy(neck)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = fast_neck(fast_bb(x.contiguous(memory_format=torch.channels_last)))
    out = out[0] if isinstance(out, (list, tuple)) else out
    ref = ref[0] if isinstance(ref, (list, tuple)) else ref
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref) < 3e-2


def test_branch_streams_give_the_same_outputs_as_one_stream():
    benchmark = pytest.importorskip('benchmark')
    model = _model()
    x = torch.randn(1, 3, 128, 96, device='cuda').contiguous(memory_format=torch.channels_last)
    plain = to_deploy(model, fuse=False)
    streams = benchmark.use_branch_streams(to_deploy(model, fuse=False))
    for _ in range(3):  # repeated calls reuse the streams and their memory
        outs = _outs(streams, x)
        torch.cuda.synchronize()
        for a, b in zip(outs, _outs(plain, x)):
            assert rel_err(a, b) < 1e-6


def test_check_on_device_times_the_cuda_graph_row():
    benchmark = pytest.importorskip('benchmark')
    case = benchmark.Case('tiny', 'w18_small', 64, 64, 1)
    impls = benchmark.build_impls(case, ['hrnet_mm', 'timm', 'hrnet_mm-deploy-cudagraphs'])
    impls = {k: v.cuda() for k, v in impls.items()}
    prep = {}
    errs = benchmark.check_on_device(impls, torch.randn(1, 3, 64, 64, device='cuda'), prep=prep)
    assert errs['hrnet_mm-deploy-cudagraphs'] < 1e-4 and prep['hrnet_mm-deploy-cudagraphs'] > 0
