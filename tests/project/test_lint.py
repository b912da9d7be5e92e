"""The code style is part of the test suite: flake8 and isort on the package, tools, tests and configs."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATHS = ['hrnet_mm', 'tools', 'tests', 'configs', '_hrnet_mm_config_hook.py', 'setup.py']


def test_flake8():
    proc = subprocess.run([sys.executable, '-m', 'flake8', *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_isort():
    proc = subprocess.run([sys.executable, '-m', 'isort', '--check-only', '--diff', *PATHS], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
