"""The package, its command line and its environment report."""
from __future__ import annotations

import subprocess
import sys

import hrnet_mm


def test_version():
    assert isinstance(hrnet_mm.__version__, str) and hrnet_mm.__version__.count('.') == 2


def test_env_report_runs_and_passes():
    proc = subprocess.run([sys.executable, '-m', 'hrnet_mm.cli.env'], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for name in ('torch', 'torchvision', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'mmpose', 'mmpretrain',
                 'openmim', 'hrnet_mm', 'mmcv ops', 'cuda'):
        assert f'\n{name} ' in '\n' + out, name
    assert 'compiled (nms, RoIAlign load and run)' in out
    for lib in ('mmdet', 'mmseg', 'mmpose', 'mmpretrain'):
        assert f"{lib} registry" in out
    assert out.count("type='hrnet_mm.HRNet' builds hrnet_mm.models.hrnet.HRNet") == 4


def test_env_report_fails_when_a_required_component_is_missing():
    code = ('import sys, hrnet_mm.cli.env as e; '
            "e.COMPONENTS.append(('not-installed-pkg', 'hrnet_mm_no_such_module', True)); sys.exit(e.main())")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert 'not-installed-pkg' in proc.stderr and 'MISSING' in proc.stdout


def test_cli_env():
    proc = subprocess.run([sys.executable, '-m', 'hrnet_mm.cli', 'env'], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
