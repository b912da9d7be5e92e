"""tools/install_stack.sh (behind `make install`): a no-op when the stamp is current, readable failures."""
from __future__ import annotations

import os
import stat
import subprocess
import time

from conftest import ROOT

SCRIPT = os.path.join(ROOT, 'tools', 'install_stack.sh')


def _run(env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.run(['bash', SCRIPT], capture_output=True, text=True, env=env, timeout=600)


def test_second_install_is_a_fast_no_op():
    t0 = time.time()
    proc = _run({})
    assert proc.returncode == 0, proc.stderr
    assert 'stack up to date' in proc.stdout
    assert time.time() - t0 < 30


def test_missing_interpreter_is_named():
    proc = _run({'FORCE': '1', 'PYTHON': '/nonexistent/python3.11'})
    assert proc.returncode == 1
    assert "interpreter '/nonexistent/python3.11' not found" in proc.stderr


def test_wrong_python_version_is_named(tmp_path):
    fake = tmp_path / 'python3.10'
    fake.write_text('#!/bin/sh\necho 3.10\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc = _run({'FORCE': '1', 'PYTHON': str(fake)})
    assert proc.returncode == 1
    assert 'is Python 3.10; the pinned stack' in proc.stderr and 'needs 3.11' in proc.stderr
