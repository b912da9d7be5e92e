"""tools/analysis: get_flops.py, plot_curves.py and vis_features.py, run as scripts from another directory."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / 'tools' / 'analysis'
DEMO_SEG = REPO / 'configs' / 'demo' / 'fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py'


def run(tool: str, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / tool), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_get_flops_paper_pose_row(tmp_path):
    proc = run('get_flops.py', '--arch', 'w32', '--task', 'pose', '--shape', 256, 192, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    total = [line for line in proc.stdout.splitlines() if line.startswith('total')][0].split()
    assert total[1] == '28,536,113' and total[3] == '7.12'
    for group in ('backbone.stem', 'backbone.layer1', 'backbone.transition3', 'backbone.stage4', 'final_layer'):
        assert group in proc.stdout


def test_get_flops_config_json(tmp_path):
    config = REPO / 'configs' / 'classification' / 'hrnet-w18_4xb32_in1k.py'
    proc = run('get_flops.py', config, '--shape', 224, '--json', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    groups = result['groups']
    assert result['input_shape'] == [3, 224, 224]
    assert groups['total']['params'] == 21_295_164  # the W18 classifier in mmpretrain's head layout
    assert groups['total']['params'] == sum(g['params'] for k, g in groups.items() if k != 'total')
    assert {'backbone.stem', 'backbone.stage4', 'neck', 'head'} <= set(groups)
    assert 3.9 < groups['total']['gflops'] < 4.0  # the paper's 3.99 less the 3,840-parameter layout difference


def test_get_flops_two_stage_detector(tmp_path):
    config = REPO / 'configs' / 'detection' / 'faster-rcnn_hrnetv2p-w18-1x_coco.py'
    proc = run('get_flops.py', config, '--shape', 800, 1333, '--json', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    groups = json.loads(proc.stdout)['groups']
    assert {'neck', 'rpn_head', 'roi_head'} <= set(groups)
    assert all(groups[g]['macs'] > 0 for g in ('neck', 'rpn_head', 'roi_head'))


@pytest.mark.parametrize('args, message', [
    (['configs/nope.py'], 'config not found'),
    (['--arch', 'w99', '--task', 'pose'], 'w99'),
])
def test_get_flops_errors(tmp_path, args, message):
    proc = run('get_flops.py', *args, cwd=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr and 'Traceback' not in proc.stderr


def test_get_flops_unknown_scope(tmp_path):
    config = tmp_path / 'bad.py'
    config.write_text("default_scope = 'mmfoo'\nmodel = dict(type='Foo')\n")
    proc = run('get_flops.py', config, cwd=tmp_path)
    assert proc.returncode != 0
    assert 'unknown default_scope' in proc.stderr and 'Traceback' not in proc.stderr


def _write_log(work_dir: Path) -> None:
    vis = work_dir / '20240101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    lines = []
    for epoch in (1, 2, 3):
        for i in range(5):
            it = (epoch - 1) * 5 + i + 1
            lines.append(dict(lr=0.02 * (1 - it / 20), data_time=0.1, loss=2.0 / it, loss_cls=1.0 / it, time=0.3,
                              epoch=epoch, iter=it, memory=100, step=it))
        lines.append({'coco/bbox_mAP': 0.1 * epoch, 'data_time': 0.1, 'time': 0.2, 'step': epoch})
    (vis / 'scalars.json').write_text('\n'.join(json.dumps(r) for r in lines) + '\n')


def test_plot_curves(tmp_path):
    _write_log(tmp_path / 'work')
    out = tmp_path / 'curves.png'
    proc = run('plot_curves.py', tmp_path / 'work', '--out', out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'loss' in proc.stdout and 'lr' in proc.stdout and 'coco/bbox_mAP' in proc.stdout
    with Image.open(out) as img:
        assert img.format == 'PNG' and img.width >= 400 and img.height >= 200

    proc = run('plot_curves.py', tmp_path / 'work', '--keys', 'nothing', '--out', out, cwd=tmp_path)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr


def test_plot_curves_no_log(tmp_path):
    (tmp_path / 'empty').mkdir()
    proc = run('plot_curves.py', tmp_path / 'empty', '--out', tmp_path / 'c.png', cwd=tmp_path)
    assert proc.returncode != 0
    assert 'no scalars.json' in proc.stderr and 'Traceback' not in proc.stderr


def test_vis_features(tmp_path):
    rng = np.random.RandomState(0)
    img = (rng.rand(80, 160, 3) * 255).astype(np.uint8)
    img[20:60, 40:100] = (200, 30, 30)
    Image.fromarray(img).save(tmp_path / 'img.png')
    out = tmp_path / 'features.png'
    proc = run('vis_features.py', DEMO_SEG, tmp_path / 'img.png', '--out', out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert '5 maps' in proc.stdout and 'random init' in proc.stdout  # 4 branches + the HRNetV2 fused map
    with Image.open(out) as png:
        assert png.format == 'PNG' and png.width >= 400 and png.height >= 400

    proc = run('vis_features.py', DEMO_SEG, tmp_path / 'missing.png', '--out', out, cwd=tmp_path)
    assert proc.returncode != 0
    assert 'image not found' in proc.stderr and 'Traceback' not in proc.stderr
