"""tools/train.py, tools/test.py and tools/dist_train.sh on the detection demo, on CPU.

Training runs in a tmp cwd on a tiny synthetic COCO set (4 train / 2 val images); the schedule is shortened
with ``--cfg-options``. Distributed training uses 2 CPU processes (gloo) on loopback, which needs hrnet_mm's
compat fix: the last test shows the same launch failing in stock mmengine.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from conftest import ROOT

CONFIG = os.path.join(ROOT, 'configs', 'demo', 'faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py')
TRAIN = os.path.join(ROOT, 'tools', 'train.py')
TEST = os.path.join(ROOT, 'tools', 'test.py')
DIST_TRAIN = os.path.join(ROOT, 'tools', 'dist_train.sh')
DIST_TEST = os.path.join(ROOT, 'tools', 'dist_test.sh')

# Test-only hooks, imported by the configs below through custom_imports (the tmp cwd is on PYTHONPATH).
HOOKS = textwrap.dedent('''
    import os
    import torch
    from mmengine.dist import get_rank
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper
    from mmengine.registry import HOOKS


    @HOOKS.register_module(force=True)
    class RankStateDumpHook(Hook):
        """Saves every rank's model state before and after training as work_dir/rank{r}.pth."""

        def _model(self, runner):
            return runner.model.module if is_model_wrapper(runner.model) else runner.model

        def before_train(self, runner):
            self.initial = {k: v.clone() for k, v in self._model(runner).state_dict().items()}

        def after_train(self, runner):
            torch.save(dict(wrapper=type(runner.model).__name__, world_size=runner.world_size,
                            initial=self.initial, final=self._model(runner).state_dict()),
                       os.path.join(runner.work_dir, f'rank{get_rank()}.pth'))
''')

# The demo config made deterministic: no random flip, no validation.
RESUME_CONFIG = f'''
_base_ = {CONFIG!r}
custom_imports = dict(imports=['hrnet_mm', 'test_hooks'], allow_failed_imports=False)
randomness = dict(seed=0)
train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.0),
    dict(type='PackDetInputs')]))
train_cfg = dict(val_interval=100)
'''

DIST_CONFIG = f'''
_base_ = {CONFIG!r}
custom_imports = dict(imports=['hrnet_mm', 'test_hooks'], allow_failed_imports=False)
custom_hooks = [dict(type='RankStateDumpHook')]
randomness = dict(seed=0)
train_cfg = dict(val_interval=100)
'''


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(cwd: Path) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), ROOT, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHON=sys.executable)
    env.pop('WORLD_SIZE', None)
    return env


def _run(cwd: Path, *cmd: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=timeout)


def _py(cwd: Path, tool: str, *args: str) -> subprocess.CompletedProcess:
    return _run(cwd, sys.executable, tool, *args)


def _out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture
def demo_cwd(tmp_path: Path) -> Path:
    """A tmp cwd with the synthetic COCO demo data (4 train / 2 val images) and the test hooks."""
    from hrnet_mm.datasets import make_coco_detection

    make_coco_detection(str(tmp_path / 'data' / 'demo' / 'coco'), {'train': 4, 'val': 2})
    (tmp_path / 'test_hooks.py').write_text(HOOKS)
    return tmp_path


def _state(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


# --------------------------------------------------------------------------------------------- errors


def test_missing_config_is_a_one_line_error(tmp_path: Path) -> None:
    for cmd in ((TRAIN, 'no/such/config.py'), (TEST, 'no/such/config.py', 'ckpt.pth'), (TEST, CONFIG, 'no.pth')):
        proc = _py(tmp_path, *cmd)
        assert proc.returncode == 2
        assert 'Traceback' not in _out(proc)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].endswith(('config file not found: no/such/config.py', 'checkpoint not found: no.pth'))


@pytest.mark.parametrize('body, expected', [
    ("default_scope = 'mmfoo'\n", "unsupported default_scope 'mmfoo'"),
    ('model = dict()\n', 'sets no default_scope'),
])
def test_unknown_or_missing_scope_is_a_one_line_error(tmp_path: Path, body: str, expected: str) -> None:
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(body)
    (tmp_path / 'ckpt.pth').write_bytes(b'')
    for cmd in ((TRAIN, str(cfg)), (TEST, str(cfg), str(tmp_path / 'ckpt.pth'))):
        proc = _py(tmp_path, *cmd)
        assert proc.returncode == 2, _out(proc)
        assert 'Traceback' not in _out(proc)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr
        assert 'mmdet, mmseg, mmpose, mmpretrain' in lines[0]


def test_help_and_usage_from_another_cwd(tmp_path: Path) -> None:
    for tool in (TRAIN, TEST):
        proc = _py(tmp_path, tool, '--help')
        assert proc.returncode == 0, _out(proc)
        assert '--cfg-options' in proc.stdout and '--launcher' in proc.stdout
        assert '--debug' in proc.stdout and '--verbose' in proc.stdout
    assert '--resume' in _py(tmp_path, TRAIN, '--help').stdout
    assert '--tta' in _py(tmp_path, TEST, '--help').stdout
    proc = _run(tmp_path, 'bash', DIST_TRAIN)
    assert proc.returncode == 2 and 'usage' in proc.stderr


# ------------------------------------------------------------------------------------ train and test


@pytest.mark.slow
def test_train_then_test_the_detection_demo(demo_cwd: Path) -> None:
    train = _py(demo_cwd, TRAIN, CONFIG, '--work-dir', 'work', '--cfg-options', 'train_cfg.max_epochs=1')
    assert train.returncode == 0, _out(train)[-4000:]
    assert 'Epoch(train) [1][2/2]' in _out(train)
    ckpt = demo_cwd / 'work' / 'epoch_1.pth'
    assert ckpt.exists()
    test = _py(demo_cwd, TEST, CONFIG, str(ckpt), '--work-dir', 'eval', '--out', 'results.pkl')
    out = _out(test)
    assert test.returncode == 0, out[-4000:]
    assert 'coco/bbox_mAP:' in out and 'Epoch(test)' in out
    assert (demo_cwd / 'results.pkl').stat().st_size > 0


CLS_CONFIG = """
default_scope = 'mmpretrain'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)
model = dict(type='ImageClassifier',
             data_preprocessor=dict(num_classes=2, mean=[128.0] * 3, std=[64.0] * 3, to_rgb=True),
             backbone=dict(type='ResNet', depth=18, base_channels=8, num_stages=1, strides=(1, ), dilations=(1, ),
                           out_indices=(0, )),
             neck=dict(type='GlobalAveragePooling'),
             head=dict(type='LinearClsHead', num_classes=2, in_channels=8, loss=dict(type='CrossEntropyLoss')))
pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=32), dict(type='PackInputs')]
dataset = dict(type='CustomDataset', data_root='data/cls', pipeline=pipeline)
train_dataloader = dict(batch_size=2, num_workers=0, dataset=dataset, sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(batch_size=2, num_workers=0, dataset=dataset, sampler=dict(type='DefaultSampler', shuffle=False))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=1)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1), logger=dict(type='LoggerHook', interval=1))
"""


@pytest.mark.slow
def test_train_then_test_an_mmpretrain_config(tmp_path: Path) -> None:
    """The scope picks mmpretrain's handling: its dataloader defaults (persistent_workers, here without
    workers), flip TTA and ``--out --out-item metrics``."""
    import cv2
    import mmengine
    import numpy as np

    rng = np.random.RandomState(0)
    for label in ('a', 'b'):
        (tmp_path / 'data' / 'cls' / label).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(tmp_path / 'data' / 'cls' / label / f'{i}.png'), rng.randint(0, 255, (32, 32, 3), np.uint8))
    (tmp_path / 'cls_cfg.py').write_text(CLS_CONFIG)
    train = _py(tmp_path, TRAIN, 'cls_cfg.py', '--work-dir', 'work')
    assert train.returncode == 0, _out(train)[-4000:]
    assert 'accuracy/top1' in _out(train)
    test = _py(tmp_path, TEST, 'cls_cfg.py', 'work/epoch_1.pth', '--tta', '--out', 'metrics.json', '--out-item',
               'metrics', '--verbose')
    assert test.returncode == 0, _out(test)[-4000:]
    assert "type='mmpretrain.AverageClsScoreTTA'" in _out(test)  # the logged config (--verbose: on the console)
    assert set(mmengine.load(tmp_path / 'metrics.json')) == {'accuracy/top1'}


# ---------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_interrupted_and_resumed_run_ends_with_the_same_weights(demo_cwd: Path) -> None:
    """2 epochs of 2 iterations straight, vs 1 epoch then ``--resume`` (latest checkpoint) to epoch 2.

    Tolerance: exact equality. On CPU both runs execute the same kernels on the same inputs with the same
    thread count (OMP_NUM_THREADS=1), data order comes from mmengine's seeded sampler and the random flip is
    off; the RPN/RoI samplers draw from the global generators, whose state hrnet_mm saves in the checkpoint and
    restores on resume (hrnet_mm.runtime.compat.resume_random_state). Any difference would be a resume bug
    (generator state, optimizer momentum, LR schedule, iteration count), not float noise.
    """
    (demo_cwd / 'resume_cfg.py').write_text(RESUME_CONFIG)
    full = _py(demo_cwd, TRAIN, 'resume_cfg.py', '--work-dir', 'full', '--cfg-options', 'train_cfg.max_epochs=2')
    assert full.returncode == 0, _out(full)[-4000:]
    first = _py(demo_cwd, TRAIN, 'resume_cfg.py', '--work-dir', 'part', '--cfg-options', 'train_cfg.max_epochs=1')
    assert first.returncode == 0, _out(first)[-4000:]
    assert not (demo_cwd / 'part' / 'epoch_2.pth').exists()
    second = _py(demo_cwd, TRAIN, 'resume_cfg.py', '--work-dir', 'part', '--resume',
                 '--cfg-options', 'train_cfg.max_epochs=2')
    out = _out(second)
    assert second.returncode == 0, out[-4000:]
    assert 'resumed epoch: 1, iter: 2' in out
    assert 'Epoch(train) [2][2/2]' in out and 'Epoch(train) [1]' not in out

    a, b = _state(demo_cwd / 'full' / 'epoch_2.pth'), _state(demo_cwd / 'part' / 'epoch_2.pth')
    start = _state(demo_cwd / 'part' / 'epoch_1.pth')
    assert a.keys() == b.keys()
    changed = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], start[k])]
    assert len(changed) > len(a) // 2  # epoch 2 really trained
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    worst = max(((a[k].double() - b[k].double()).abs().max().item() for k in mismatched), default=0.0)
    assert not mismatched, f'{len(mismatched)} tensors differ (max abs diff {worst:.3g}): {mismatched[:5]}'


# ----------------------------------------------------------------------------------------- distributed


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only (gloo) path')
def test_two_process_cpu_training_through_dist_train_sh(demo_cwd: Path) -> None:
    (demo_cwd / 'dist_cfg.py').write_text(DIST_CONFIG)
    env_port = free_port()
    proc = subprocess.run(['bash', DIST_TRAIN, 'dist_cfg.py', '2', '--work-dir', 'work', '--verbose',
                           '--cfg-options', 'train_cfg.max_epochs=2'], cwd=demo_cwd,
                          env=dict(_env(demo_cwd), PORT=str(env_port), MASTER_ADDR='127.0.0.1'),
                          capture_output=True, text=True, timeout=600)
    out = _out(proc)
    assert proc.returncode == 0, out[-5000:]
    assert 'Distributed training: True' in out  # the environment, printed with --verbose
    assert 'Epoch(train) [2][1/1]' in out  # 4 images / (2 ranks x 2 per batch): one iteration per epoch
    ranks = [torch.load(demo_cwd / 'work' / f'rank{r}.pth', weights_only=False) for r in (0, 1)]
    assert [r['world_size'] for r in ranks] == [2, 2]
    assert {r['wrapper'] for r in ranks} == {'MMDistributedDataParallel'}
    final0, final1 = ranks[0]['final'], ranks[1]['final']
    # parameters are all-reduced every step: bitwise identical; BN running statistics are per rank
    # (mmengine wraps with broadcast_buffers=False) and are only checked to have been updated.
    params = [k for k in final0 if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    assert params and all(torch.equal(final0[k], final1[k]) for k in params)
    assert all(torch.equal(ranks[0]['initial'][k], ranks[1]['initial'][k]) for k in params)
    trained = [k for k in params if not torch.equal(final0[k], ranks[0]['initial'][k])]
    assert len(trained) > len(params) // 2
    ckpt = _state(demo_cwd / 'work' / 'epoch_2.pth')
    assert all(torch.equal(ckpt[k], final0[k]) for k in ckpt)

    test = subprocess.run(['bash', DIST_TEST, 'dist_cfg.py', 'work/epoch_2.pth', '2', '--work-dir', 'eval',
                           '--out', 'results.pkl'], cwd=demo_cwd,
                          env=dict(_env(demo_cwd), PORT=str(free_port())), capture_output=True, text=True,
                          timeout=600)
    assert test.returncode == 0, _out(test)[-5000:]
    assert 'coco/bbox_mAP:' in _out(test)
    import mmengine

    assert len(mmengine.load(demo_cwd / 'results.pkl')) == 2  # both val images, gathered from the 2 ranks

    # --deploy under the distributed wrapper: each rank unwraps the model, calibrates and tests its own int8 copy
    deployed = subprocess.run(['bash', DIST_TEST, 'dist_cfg.py', 'work/epoch_2.pth', '2', '--work-dir', 'eval_int8',
                               '--deploy', 'int8', '--calibration-images', '2', '--out', 'results_int8.pkl'],
                              cwd=demo_cwd, env=dict(_env(demo_cwd), PORT=str(free_port())), capture_output=True,
                              text=True, timeout=600)
    assert deployed.returncode == 0, _out(deployed)[-5000:]
    assert 'testing the deploy model in int8' in _out(deployed) and 'coco/bbox_mAP:' in _out(deployed)
    assert len(mmengine.load(demo_cwd / 'results_int8.pkl')) == 2


INIT_DIST = textwrap.dedent('''
    import sys
    if sys.argv[1] == 'with-hrnet_mm':
        import hrnet_mm  # noqa: F401
    from mmengine.dist import get_backend, get_world_size, init_dist
    init_dist('pytorch', backend=sys.argv[2])
    print('INITIALISED', get_backend(), get_world_size())
''')


def _init_dist(tmp_path: Path, mode: str, backend: str) -> subprocess.CompletedProcess:
    script = tmp_path / 'init_dist.py'
    script.write_text(INIT_DIST)
    env = dict(_env(tmp_path), RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(free_port()))
    return subprocess.run([sys.executable, str(script), mode, backend], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason='the failure only exists without a GPU')
def test_pytorch_launch_without_gpu_fails_in_stock_mmengine(tmp_path: Path) -> None:
    proc = _init_dist(tmp_path, 'plain', 'gloo')
    assert proc.returncode != 0
    assert 'Found no NVIDIA driver' in proc.stderr or 'Torch not compiled with CUDA' in proc.stderr, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='the fix only acts without a GPU')
@pytest.mark.parametrize('backend', ['gloo', 'nccl'])
def test_pytorch_launch_without_gpu_works_with_hrnet_mm(tmp_path: Path, backend: str) -> None:
    proc = _init_dist(tmp_path, 'with-hrnet_mm', backend)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'INITIALISED gloo 1' in proc.stdout
    assert ('nccl replaced by gloo' in proc.stderr) == (backend == 'nccl')


def test_with_an_accelerator_mmengine_is_called_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrappers pass every call straight to mmengine when CUDA (or another accelerator) is present."""
    from hrnet_mm.runtime import compat

    calls: List[tuple] = []

    def original(backend: str, **kwargs: object) -> None:
        calls.append((backend, kwargs, torch.cuda.set_device))

    wrapped = compat.cpu_safe_dist_init(original)
    assert compat.cpu_safe_dist_init(wrapped) is wrapped
    monkeypatch.setattr(compat, 'accelerator_available', lambda: True)
    wrapped('nccl', init_backend='torch', timeout=5)
    assert calls == [('nccl', dict(init_backend='torch', timeout=5), torch.cuda.set_device)]
    monkeypatch.setattr(compat, 'accelerator_available', lambda: False)
    with pytest.warns(RuntimeWarning, match='nccl replaced by gloo'):
        wrapped('nccl')
    assert calls[-1][0] == 'gloo' and calls[-1][2] is not torch.cuda.set_device
    assert calls[-1][2](0) is None  # set_device is a no-op only inside the call
    assert torch.cuda.set_device is calls[0][2]


def test_cpu_ddp_of_mmengine_is_patched_only_without_accelerator() -> None:
    import mmengine.dist.utils as dist_utils
    from mmengine.model import MMDistributedDataParallel

    import hrnet_mm  # noqa: F401

    for name in ('_init_dist_pytorch', '_init_dist_slurm', '_init_dist_mpi'):
        assert getattr(getattr(dist_utils, name), '_hrnet_mm_cpu_distributed', False)
    assert getattr(MMDistributedDataParallel.__init__, '_hrnet_mm_cpu_distributed', False)


def test_sync_bn_is_reverted_for_cpu_ddp() -> None:
    from hrnet_mm.runtime import compat

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.SyncBatchNorm(4))
    with pytest.warns(RuntimeWarning, match='SyncBatchNorm has no CPU implementation'):
        out = compat._revert_sync_bn_on_cpu(net)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in out.modules())
    assert isinstance(out[1], torch.nn.modules.batchnorm._BatchNorm)
    plain = torch.nn.Sequential(torch.nn.BatchNorm2d(4))
    assert compat._revert_sync_bn_on_cpu(plain) is plain
