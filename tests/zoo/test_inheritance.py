"""A repository outside hrnet_mm inherits hrnet_mm's configs with `_base_ = 'hrnet_mm::<task>/<file>.py'`,
without copying them and without changes to mmengine (the installed start-up hook registers the package)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

USER_CONFIG = textwrap.dedent('''
    _base_ = 'hrnet_mm::demo/faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py'
    model = dict(backbone=dict(frozen_stages=1))
    train_cfg = dict(max_epochs=1, val_interval=1)
''')


def _python(code, cwd):
    return subprocess.run([sys.executable, '-W', 'ignore', '-c', code], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_config_outside_the_repository_inherits_hrnet_mm_config(tmp_path):
    (tmp_path / 'my_config.py').write_text(USER_CONFIG)
    code = textwrap.dedent('''
        import sys
        from mmengine.config import Config
        assert 'hrnet_mm' not in sys.modules  # nothing imported it before the config is parsed
        cfg = Config.fromfile('my_config.py')
        from hrnet_mm.registry import build_in_scope
        model = build_in_scope(cfg.default_scope, cfg.model)
        import hrnet_mm
        print(isinstance(model.backbone, hrnet_mm.HRNet), model.backbone.frozen_stages, cfg.train_cfg.max_epochs)
    ''')
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ['True', '1', '1']


def test_unknown_hrnet_mm_config_names_the_file(tmp_path):
    (tmp_path / 'bad.py').write_text("_base_ = 'hrnet_mm::demo/no-such-config.py'\n")
    proc = _python("from mmengine.config import Config; Config.fromfile('bad.py')", tmp_path)
    assert proc.returncode != 0 and 'no-such-config.py' in proc.stderr


@pytest.mark.slow
def test_mim_train_of_an_inheriting_config(tmp_path):
    from hrnet_mm.datasets import make_coco_detection
    make_coco_detection(str(tmp_path / 'data' / 'demo' / 'coco'), {'train': 4, 'val': 2})
    (tmp_path / 'my_config.py').write_text(USER_CONFIG)
    mim = os.path.join(os.path.dirname(sys.executable), 'mim')
    proc = subprocess.run([mim, 'train', 'mmdet', 'my_config.py', '--gpus', '0', '--work-dir', 'work'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / 'work' / 'epoch_1.pth').exists()
