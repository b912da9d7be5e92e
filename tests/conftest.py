"""Shared fixtures and helpers of the hrnet_mm test suite (CPU, small widths, 64-160 px inputs)."""
from __future__ import annotations

import http.server
import os
import sys
import threading

import pytest
import torch
import torch.nn as nn

os.environ.setdefault('OMP_NUM_THREADS', '2')
torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A narrow four-branch spec in the peers' `extra` format, quick to build and run.
TINY_EXTRA = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1,), num_channels=(16,)),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=(8, 16)),
    stage3=dict(num_modules=2, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=(8, 16, 32)),
    stage4=dict(num_modules=2, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1),
                num_channels=(8, 16, 32, 64)))


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fills every parameter and BN statistic with seeded random values, so a parity test compares
    networks whose every weight matters (a fresh BN is the identity and would hide a wrong path)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in sorted(module.state_dict(keep_vars=True).items()):
        if not t.is_floating_point() or t.dim() == 0:  # counters; the 0-dim scales of mmdet's heads stay 1
            continue
        if name.endswith('running_var'):
            t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
        elif name.endswith(('running_mean', '.bias')):
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        elif t.dim() == 1:  # norm weights
            t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
        else:  # conv / linear weights, scaled to keep activations O(1)
            fan_in = t[0].numel()
            t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return module


def grads_l2(grads: dict, truth: dict) -> float:
    """||g - g_truth|| / ||g_truth|| over all parameters together (dicts of gradients by parameter name)."""
    diff = sum(((grads[k].double() - truth[k].double()) ** 2).sum() for k in truth)
    return (diff / sum((truth[k].double() ** 2).sum() for k in truth)).sqrt().item()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the error relative to the output's scale."""
    assert a.shape == b.shape, f'shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}'
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


KERNEL_NODES = {'winograd': 'TrainConv3x3', 'norm': 'BatchNormAct'}


def kernel_nodes(outputs) -> dict:
    """How many autograd nodes of each CPU training kernel (``winograd``, ``norm``) the graph behind ``outputs``
    holds: which kernels a step ran, seen from outside (their C++ autograd nodes carry their names). Nodes inside a
    gradient checkpoint are not in the graph until the backward pass recomputes them."""
    counts = dict.fromkeys(KERNEL_NODES, 0)
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for kind, name in KERNEL_NODES.items():
            counts[kind] += name in node.name()
        stack.extend(n for n, _ in node.next_functions)
    return counts


def vm_flags(address: int) -> list:
    """The VmFlags (``/proc/self/smaps``) of this process's mapping that holds ``address``: ``hg`` marks one
    advised for transparent huge pages."""
    with open('/proc/self/smaps') as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if '-' in head and all(c in '0123456789abcdef-' for c in head):
                start, end = (int(v, 16) for v in head.split('-'))
                inside = start <= address < end
            elif inside and line.startswith('VmFlags:'):
                return line.split()[1:]
    raise AssertionError(f'no mapping holds {address:#x}')


def single_thread_env() -> dict:
    """The environment for a tool run in a subprocess: one OpenMP thread. These tiny models gain little from a
    second thread, and on a busy 2-core machine two threads spin against other processes (measured 0.65 s/iter
    instead of 0.09 s/iter for the pose demo)."""
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')


def run_tool(cwd, tool: str, *args: str, timeout: int = 600):
    """Runs ``tools/<tool> *args`` in ``cwd`` as a user would (a fresh process, ``single_thread_env``) and asserts
    that it succeeded; returns the ``subprocess.CompletedProcess``."""
    import subprocess
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', tool), *args], cwd=cwd, env=single_thread_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'{tool} {" ".join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}'
    return proc


def json_lines(path) -> list:
    """The records of a JSON-lines file (mmengine's ``scalars.json`` and ``<timestamp>.json``)."""
    import json
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def training_loss_fell(scalars) -> tuple:
    """Asserts that the training loss in mmengine's ``vis_data/scalars.json`` (path ``scalars``) fell by 30% or
    more, from the mean of its first three logged values to the mean of its last three; returns both means."""
    losses = [r['loss'] for r in json_lines(scalars) if 'loss' in r]
    assert len(losses) >= 6, losses
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, f'{scalars}: loss did not fall: {losses}'
    return first, last


def pytest_collection_modifyitems(config, items):
    """Tests that use the compiled CPU kernels (the ``kernel`` fixture) carry the ``kernels`` marker.

    Under pytest-xdist the ``slow`` tests (minutes each) run first: the workers take tests in collection order,
    so a long test collected last would run alone while the other worker idles. The sort is stable, and every
    worker computes the same order, as xdist requires."""
    for item in items:
        if 'kernel' in getattr(item, 'fixturenames', ()):
            item.add_marker(pytest.mark.kernels)
    if os.environ.get('PYTEST_XDIST_WORKER'):
        items.sort(key=lambda item: item.get_closest_marker('slow') is None)


@pytest.fixture
def tiny_extra():
    import copy
    return copy.deepcopy(TINY_EXTRA)


@pytest.fixture(scope='module')
def kernel():
    """hrnet_mm's compiled Winograd kernel (built on first use): the tests that need it skip without a C++
    compiler, and fail if a compiler is here but the build failed."""
    import shutil

    from hrnet_mm.ops import winograd
    if not winograd.available():
        if shutil.which('c++') or shutil.which('g++'):
            pytest.fail(f'a C++ compiler is here but the Winograd kernel did not build: {winograd.build_error()}')
        pytest.skip(f'no C++ compiler: {winograd.build_error()}')
    return winograd.extension()


def pytest_configure(config):
    sys.path.insert(0, ROOT)


class FileServer:
    """Serves ``files`` ({path: bytes}); ``modes`` ({path: [mode, ...]}) make the next requests misbehave:
    ``'truncate'`` sends half the body with the full Content-Length and closes, ``'html'`` an error page."""

    def __init__(self):
        self.files, self.modes, self.hits = {}, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.hits.append(self.path)
                data = server.files.get(self.path)
                mode = server.modes.get(self.path, []).pop(0) if server.modes.get(self.path) else 'ok'
                if data is None:
                    self.send_error(404)
                    return
                if mode == 'html':
                    data = b'<!DOCTYPE html><html><body>503 Service Unavailable</body></html>'
                self.send_response(200)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2] if mode == 'truncate' else data)
                self.wfile.flush()
                if mode == 'truncate':
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    """A :class:`FileServer` on 127.0.0.1 for the test."""
    s = FileServer()
    yield s
    s.close()
