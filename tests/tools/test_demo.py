"""The demo (`make demo`): smoke mode, log parsing, and one task end to end."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from hrnet_mm.cli import demo


def test_smoke_builds_through_each_task_registry():
    lines = demo.smoke('w18_small', size=64)
    text = '\n'.join(lines)
    for lib in ('mmdet', 'mmseg', 'mmpose', 'mmpretrain'):
        assert f'\n{lib} ' in text
    assert len(re.findall(r'hrnet_mm\.HRNet\b(?!V)', text)) == 4  # one backbone per library


def test_parse_test_metrics_reads_the_last_summary_line():
    log = ('11/25 10:23:34 - mmengine - INFO - Epoch(test) [4/4]    coco/bbox_mAP: 0.1000  data_time: 0.0012\n'
           '11/25 10:23:35 - mmengine - INFO - Epoch(test) [8/8]    coco/bbox_mAP: 0.4210  coco/bbox_mAP_50: 0.8000'
           '  data_time: 0.0012  time: 0.0445\n')
    metrics = demo.parse_test_metrics(log)
    assert metrics['coco/bbox_mAP'] == pytest.approx(0.421) and metrics['coco/bbox_mAP_50'] == pytest.approx(0.8)
    iter_log = '11/25 11:17:53 - mmengine - INFO - Iter(test) [12/12]    aAcc: 93.3900  mIoU: 77.5100  mAcc: 83.5000\n'
    assert demo.parse_test_metrics(iter_log)['mIoU'] == pytest.approx(77.51)


def test_every_demo_task_has_its_config():
    for task in demo.TASKS.values():
        assert os.path.basename(demo._config_path(task.config)).startswith(task.config)


@pytest.mark.slow
def test_demo_detection_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'hrnet_mm.cli.demo', '--task', 'det', '--root', str(tmp_path),
                           '--work-dir', str(tmp_path / 'work')], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'hrnet_mm demo results' in proc.stdout and 'COCO bbox mAP' in proc.stdout
    assert (tmp_path / 'data' / 'demo' / 'coco' / 'annotations' / 'instances_train.json').exists()
    from PIL import Image
    pictures = sorted((tmp_path / 'work' / 'det' / 'pictures').glob('*.png'))
    assert [p.name for p in pictures][-1] == 'training_curves.png' and len(pictures) == 3, pictures
    for p in pictures:
        with Image.open(p) as im:
            assert im.format == 'PNG' and min(im.size) > 32
        assert str(p) in proc.stdout
