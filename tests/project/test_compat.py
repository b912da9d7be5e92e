"""Runtime fixes of hrnet_mm.runtime.compat, each shown to be needed: the same job fails without hrnet_mm."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

TRAIN_JOB = textwrap.dedent('''
    import sys, torch, torch.nn as nn
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    if sys.argv[2] == 'with-hrnet_mm':
        import hrnet_mm  # noqa: F401  (what custom_imports=['hrnet_mm'] does in a config)

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(4, 1))
        def forward(self, x, y, mode='loss'):
            out = self.net(x)
            return dict(loss=((out.squeeze(1) - y) ** 2).mean()) if mode == 'loss' else out

    g = torch.Generator().manual_seed(0)
    data = [dict(x=torch.randn(3, 16, 16, generator=g), y=torch.randn((), generator=g)) for _ in range(8)]
    def runner(max_iters, resume):
        return Runner(model=Toy(), work_dir=sys.argv[1], train_dataloader=dict(
                          dataset=data, sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2,
                          collate_fn=dict(type='default_collate')),
                      optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
                      train_cfg=dict(by_epoch=False, max_iters=max_iters),
                      default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                                         logger=dict(type='LoggerHook', interval=1)),
                      resume=resume, randomness=dict(seed=0), default_scope='mmengine')
    runner(4, False).train()
    r = runner(6, True)
    r.train()
    print('RESUMED_TO', r.iter)
''')


def _run(tmp_path, mode):
    script = tmp_path / 'job.py'
    script.write_text(TRAIN_JOB)
    return subprocess.run([sys.executable, str(script), str(tmp_path / 'work'), mode], capture_output=True,
                          text=True, timeout=600)


def test_resume_of_an_mmengine_checkpoint_works_with_hrnet_mm(tmp_path):
    proc = _run(tmp_path, 'with-hrnet_mm')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'RESUMED_TO 6' in proc.stdout
    assert 'resumed epoch: 0, iter: 4' in proc.stdout + proc.stderr


def test_resume_fails_without_hrnet_mm(tmp_path):
    proc = _run(tmp_path, 'plain')
    assert proc.returncode != 0
    assert 'UnpicklingError' in proc.stderr or 'Weights only load failed' in proc.stderr


class Arbitrary:
    pass


def test_other_pickled_objects_are_still_refused(tmp_path):
    import torch

    import hrnet_mm  # noqa: F401
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': Arbitrary()}, path)
    with pytest.raises(Exception, match='Weights only load failed'):
        torch.load(path)


def test_getattr_is_allowed_only_for_history_buffer_statistics(tmp_path):
    """HistoryBuffer pickles `getattr(HistoryBuffer, 'mean')`; any other getattr stays refused."""
    import pickle

    import numpy as np
    import torch

    import hrnet_mm  # noqa: F401

    class Evil:
        def __reduce__(self):
            return getattr, (np.ndarray, 'tofile')

    path = tmp_path / 'evil_getattr.pth'
    torch.save({'x': Evil()}, path)
    with pytest.raises(pickle.UnpicklingError, match='not part of an mmengine checkpoint'):
        torch.load(path)


def test_checkpoint_meta_with_an_empty_array_loads_weights_only(tmp_path):
    """mmpose writes the dataset's meta into checkpoints; a set without a skeleton (COFW) has an empty
    ``skeleton_link_colors`` array, which pickles as ``bytes()``: it must load under torch's weights-only default."""
    import numpy as np
    import torch

    import hrnet_mm  # noqa: F401
    path = tmp_path / 'ckpt.pth'
    meta = dict(dataset_meta=dict(skeleton_link_colors=np.zeros((0, 3), np.uint8)))
    torch.save(dict(meta=meta, state_dict={'w': torch.ones(1)}), path, _use_new_zipfile_serialization=True)
    loaded = torch.load(path)
    assert loaded['meta']['dataset_meta']['skeleton_link_colors'].shape == (0, 3)
