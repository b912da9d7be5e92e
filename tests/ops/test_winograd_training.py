"""Winograd 3x3 convolutions in CPU training steps (hrnet_mm.ops.winograd.train_conv, HRNet(cpu_kernels=True)).

References: torch's own convolution and its autograd in float64. Tolerances as in test_winograd.py: F(2x2, 3x3)
about as exact as a direct float32 convolution, F(4x4, 3x3) up to about 1e-5 of the largest value, per pass.
"""
from __future__ import annotations

import contextlib
import copy
import json
import threading

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import TINY_EXTRA, grads_l2, kernel_nodes, randomize_, rel_err

from hrnet_mm.models import HRNet
from hrnet_mm.ops import uses_cpu_kernels, winograd

# tile 0 is oneDNN's: its float32 weight gradient of 2x48x40 positions reaches 2.0e-6 with its AVX2 kernels
TOL = {0: 4e-6, 2: 2e-6, 4: 3e-5}


@pytest.fixture
def any_width(monkeypatch):
    """Winograd for the narrow test networks too (by default only convolutions with >= 32 channels use it)."""
    monkeypatch.setattr(winograd, 'TRAIN_MIN_CHANNELS', 1)


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('tile', winograd.TILES)
@pytest.mark.parametrize('flip', [False, True])
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('kc', [(40, 24), (5, 8), (18, 33)])
def test_training_weight_transform_equals_prepare_weight(kernel, tile, flip, channels_last, kc):
    """One pass from either memory format of the weight: the packed layout of pack_weight, the transform of
    transform_weight; flip gives that of the input-gradient convolution (transposed, turned by 180 degrees)."""
    k, c = kc
    w = torch.randn(k, c, 3, 3, generator=torch.Generator().manual_seed(k + c))
    ref = winograd.prepare_weight(w.flip((2, 3)).transpose(0, 1) if flip else w, tile)
    got = kernel.winograd_weight(_cl(w) if channels_last else w, tile, flip)
    assert got.shape == ref.shape and got.is_contiguous()
    assert rel_err(got, ref) < 1e-6


def _weight_grad64(x, dy):
    """The weight gradient of conv2d(x, w, padding=1) in float64 (it does not depend on w)."""
    w = torch.zeros(dy.shape[1], x.shape[1], 3, 3, dtype=torch.float64)
    return torch.ops.aten.convolution_backward(dy.double(), x.double(), w, None, [1, 1], [1, 1], [1, 1], False,
                                               [0, 0], 1, [False, True, False])[1]


@pytest.mark.parametrize('tile', winograd.TILES)
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('shape', [(2, 13, 7, 9, 20), (1, 7, 5, 4, 3), (1, 40, 6, 10, 9), (3, 8, 3, 2, 16),
                                   (2, 24, 48, 40, 20), (1, 96, 32, 32, 96)])
def test_fused_weight_gradient_equals_torch(kernel, tile, channels_last, shape):
    """winograd_conv_weight_grad against float64 torch, laid out like the weight it is the gradient of: channel
    counts that fill a 6-row, 16-column product block partly or not at all, maps smaller than a tile, and maps
    whose transformed input and output gradient are too large for a core's L2: summed chunk by chunk, or, where
    the sum (P x C x K) is too large as well (96 channels by F(4x4)), in blocks of rows."""
    n, c, h, w, k = shape
    g = torch.Generator().manual_seed(sum(shape))
    x, dy = (_cl(torch.randn(n, ch, h, w, generator=g)) for ch in (c, k))
    template = torch.empty(k, c, 3, 3)
    template = _cl(template) if channels_last else template
    got = kernel.winograd_conv_weight_grad(x, dy, tile, template)
    assert got.shape == template.shape and got.stride() == template.stride()
    assert rel_err(got, _weight_grad64(x, dy)) < TOL[tile]


@pytest.mark.parametrize('tile', winograd.TILES)
def test_fused_weight_gradient_of_a_large_map_stays_accurate(kernel, tile):
    """A sum over thousands of tiles (a 160x160 map: 6400 of F(2x2)) is added up from partial sums: its error
    stays within the single-pass tolerance instead of growing with the map."""
    g = torch.Generator().manual_seed(3)
    x, dy = (_cl(torch.randn(1, 8, 160, 160, generator=g)) for _ in range(2))
    got = kernel.winograd_conv_weight_grad(x, dy, tile, torch.empty(8, 8, 3, 3))
    assert rel_err(got, _weight_grad64(x, dy)) < TOL[tile] / 2


def test_fused_weight_gradient_rejects_mismatched_inputs(kernel):
    x = _cl(torch.randn(1, 8, 6, 6))
    with pytest.raises(RuntimeError, match='dy must be'):
        kernel.winograd_conv_weight_grad(x, _cl(torch.randn(1, 8, 6, 5)), 2, torch.empty(8, 8, 3, 3))
    with pytest.raises(RuntimeError, match='weight must be'):
        kernel.winograd_conv_weight_grad(x, _cl(torch.randn(1, 4, 6, 6)), 2, torch.empty(8, 8, 3, 3))
    with pytest.raises(RuntimeError, match='channels_last'):
        kernel.winograd_conv_weight_grad(x.contiguous(), x, 2, torch.empty(8, 8, 3, 3))
    with pytest.raises(RuntimeError, match='tile must be'):
        kernel.winograd_conv_weight_grad(x, x, 3, torch.empty(8, 8, 3, 3))


def _torch_step(x, w, dy):
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    y = F.conv2d(x64, w64, padding=1)
    y.backward(dy.double())
    return y.detach(), x64.grad, w64.grad


@pytest.mark.parametrize('tile,weight_tile', [(2, 2), (4, 4), (2, 0), (0, 4), (4, 2), (0, 2)])
@pytest.mark.parametrize('x_cl,w_cl', [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize('shape', [(2, 5, 9, 11, 7), (1, 24, 13, 6, 40), (1, 16, 4, 5, 16)])
def test_training_convolution_equals_torch(kernel, tile, weight_tile, x_cl, w_cl, shape):
    """Output, input gradient and weight gradient against float64 torch; the output and the input gradient keep
    the input's memory format, the weight gradient the weight's."""
    n, c, h, w_, k = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(n, c, h, w_, generator=g)
    w = torch.randn(k, c, 3, 3, generator=g) / (9 * c) ** 0.5
    dy = torch.randn(n, k, h, w_, generator=g)
    ref = _torch_step(x, w, dy)
    x = (_cl(x) if x_cl else x).requires_grad_()
    w = (_cl(w) if w_cl else w).requires_grad_()
    y = winograd._train_conv3x3(x, w, tile, weight_tile)
    y.backward(dy)
    assert y.is_contiguous(memory_format=torch.channels_last) == x_cl and (x_cl or y.is_contiguous())
    assert x.grad.stride() == x.stride() and w.grad.stride() == w.stride()
    assert rel_err(y, ref[0]) < TOL[tile]
    assert rel_err(x.grad, ref[1]) < TOL[tile]
    assert rel_err(w.grad, ref[2]) < TOL[weight_tile]


@contextlib.contextmanager
def _threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize('tile,weight_tile', [(2, 2), (4, 4), (2, 4), (4, 0), (0, 2)])
@pytest.mark.parametrize('shape', [(1, 32, 8, 6, 32), (2, 24, 13, 6, 40), (2, 16, 48, 40, 16)])
def test_gradients_side_by_side_are_the_same_floats(kernel, tile, weight_tile, shape):
    """``together``: with two threads the two gradients run one per thread where both are Winograd (otherwise one
    after the other); the floats are those of the gradients one after the other, on two threads or (Winograd's) on
    one, in the autograd node too, on the main thread or another one, with no graph recorded from the worker
    thread. The last shape's weight gradient is summed chunk by chunk (two partial sums whatever the thread
    count)."""
    n, c, h, w_, k = shape
    g = torch.Generator().manual_seed(sum(shape) + tile)
    x, dy = _cl(torch.randn(n, c, h, w_, generator=g)), _cl(torch.randn(n, k, h, w_, generator=g))
    w = torch.randn(k, c, 3, 3, generator=g) / (9 * c) ** 0.5
    ref = _torch_step(x, w, dy)
    with _threads(2):
        apart = kernel.winograd_train_gradients(dy, x, w, tile, weight_tile, False)
        together = kernel.winograd_train_gradients(dy, x, w, tile, weight_tile, True)
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        winograd._train_conv3x3(xs, ws, tile, weight_tile, True).backward(dy)
        result = {}

        def other_thread():
            xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
            winograd._train_conv3x3(xt, wt, tile, weight_tile, True).backward(dy)
            result['grads'] = xt.grad, wt.grad
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), 'the backward on another thread did not finish'
    with _threads(1):
        one = kernel.winograd_train_gradients(dy, x, w, tile, weight_tile, True)
    for grads in (together, (xs.grad, ws.grad), result['grads']):
        assert torch.equal(grads[0], apart[0]) and torch.equal(grads[1], apart[1])
        assert grads[0].grad_fn is None and grads[1].grad_fn is None
    # on one thread: the Winograd gradients (oneDNN's sums depend on its thread count: its weight gradient of the
    # last shape does)
    assert (tile == 0 or torch.equal(one[0], apart[0])) and (weight_tile == 0 or torch.equal(one[1], apart[1]))
    assert rel_err(apart[0], ref[1]) < TOL[tile] and rel_err(apart[1], ref[2]) < TOL[weight_tile]
    with pytest.raises(RuntimeError, match='tile must be 0 .oneDNN., 2 or 4'):
        kernel.winograd_train_gradients(dy, x, w, tile, 3, True)


@pytest.mark.parametrize('tile', winograd.TILES)
@pytest.mark.parametrize('flip', [False, True])
@pytest.mark.parametrize('w_cl', [False, True])
@pytest.mark.parametrize('shape', [(1, 40, 4, 6, 72), (2, 33, 3, 5, 24), (1, 64, 8, 6, 64)])
def test_low_resolution_convolution_transforms_the_weight_inside_the_products(kernel, tile, flip, w_cl, shape):
    """Maps with fewer tiles than output channels transform the training weight a panel at a time inside the
    products (run_raw) instead of packing it whole first (winograd_weight + winograd_conv3x3): the same sums in the
    same order, so the same bits, for the forward pass and the turned-weight convolution of the input gradient,
    with 8-column last panels (72, 24, 40 columns) and channel counts that are not multiples of 8."""
    n, c, h, w_, k = shape
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(k, c, 3, 3, generator=g)
    w = _cl(w) if w_cl else w
    rows, cols = (k, c) if flip else (c, k)
    x = _cl(torch.randn(n, rows, h, w_, generator=g))
    raw = kernel.winograd_train_input_grad(x, x, w, tile) if flip else kernel.winograd_train_forward(x, w, tile)
    u = kernel.winograd_weight(w, tile, flip)
    packed = torch.ops.hrnet_mm.winograd_conv3x3(x, u, cols, None, None, False, tile)
    assert torch.equal(raw, packed)
    ref = F.conv2d(x.double(), (w.transpose(0, 1).flip(2, 3) if flip else w).double(), padding=1)
    assert rel_err(raw, ref) < TOL[tile]


@pytest.mark.parametrize('needs', ['x', 'weight'])
def test_training_convolution_computes_only_the_gradients_asked_for(kernel, needs):
    g = torch.Generator().manual_seed(5)
    x, w = _cl(torch.randn(1, 8, 6, 7, generator=g)), _cl(torch.randn(8, 8, 3, 3, generator=g))
    (x if needs == 'x' else w).requires_grad_()
    winograd._train_conv3x3(x, w, 2, 4).sum().backward()
    assert (x.grad is not None, w.grad is not None) == (needs == 'x', needs == 'weight')
    ref = _torch_step(x, w, torch.ones(1, 8, 6, 7))
    assert rel_err(x.grad if needs == 'x' else w.grad, ref[1] if needs == 'x' else ref[2]) < TOL[4]


def test_training_convolution_rejects_double_backward_and_unknown_algorithms(kernel):
    x = _cl(torch.randn(1, 8, 6, 6)).requires_grad_()
    w = torch.randn(8, 8, 3, 3, requires_grad=True)
    y = winograd._train_conv3x3(x, w, 2, 2)
    with pytest.raises(RuntimeError, match='not differentiable'):
        torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='must be 0 .oneDNN., 2 or 4'):
        winograd._train_conv3x3(x, w, 3, 2)


@pytest.mark.parametrize('tile', [0, *winograd.TILES])
def test_training_passes_equal_torch(kernel, tile):
    """The passes that choose_training_algorithm times are those the autograd node runs: the forward and
    input-gradient convolutions and the weight gradient, each by oneDNN (0) or a Winograd tile."""
    g = torch.Generator().manual_seed(tile)
    x, dy = _cl(torch.randn(1, 24, 9, 10, generator=g)), _cl(torch.randn(1, 40, 9, 10, generator=g))
    w = torch.randn(40, 24, 3, 3, generator=g) / 15
    ref = _torch_step(x, w, dy)
    assert rel_err(kernel.winograd_train_forward(x, w, tile), ref[0]) < TOL[tile]
    assert rel_err(kernel.winograd_train_input_grad(dy, x, w, tile), ref[1]) < TOL[tile]
    assert rel_err(kernel.winograd_train_weight_grad(x, dy, w, tile), ref[2]) < TOL[tile]
    with pytest.raises(RuntimeError, match='tile must be 0 .oneDNN., 2 or 4'):
        kernel.winograd_train_forward(x, w, 3)
    with pytest.raises(RuntimeError, match='tile must be 0 .oneDNN., 2 or 4'):
        kernel.winograd_train_input_grad(dy, x, w, -1)
    with pytest.raises(RuntimeError, match='tile must be 0 .oneDNN., 2 or 4'):
        kernel.winograd_train_weight_grad(x, dy, w, 1)


def _conv(cin=32, cout=32, **kw):
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, 3, padding=kw.pop('padding', 1), bias=kw.pop('bias', False), **kw)


@pytest.mark.parametrize('case', ['no grad', 'float64', 'stride 2', 'bias', 'narrow', 'autocast', 'dilation',
                                  'subclass'])
def test_train_conv_runs_the_plain_convolution_outside_its_scope(kernel, case):
    conv, x = _conv(), torch.randn(1, 32, 12, 10, requires_grad=True)
    ctx = torch.no_grad() if case == 'no grad' else torch.autocast('cpu', torch.bfloat16, enabled=case == 'autocast')
    if case == 'float64':
        conv, x = conv.double(), x.detach().double().requires_grad_()
    elif case == 'stride 2':
        conv = _conv(stride=2)
    elif case == 'bias':
        conv = _conv(bias=True)
    elif case == 'narrow':
        conv, x = _conv(16, 32), torch.randn(1, 16, 12, 10, requires_grad=True)
    elif case == 'dilation':
        conv = _conv(dilation=2, padding=2)
    elif case == 'subclass':
        conv.__class__ = type('MyConv', (nn.Conv2d,), {})
    with ctx, winograd.force_algorithm(4):
        assert not winograd.trainable(conv, x)
        assert torch.equal(winograd.train_conv(conv, x), conv(x))


def test_train_conv_uses_the_chosen_algorithm(kernel, monkeypatch):
    conv, x = _conv(), torch.randn(1, 32, 12, 10, requires_grad=True)
    calls = []
    monkeypatch.setattr(winograd, '_train_conv3x3', lambda *a: calls.append(a[2:]) or conv(a[0]))
    with winograd.force_algorithm(2):
        winograd.train_conv(conv, x)
    with winograd.force_algorithm(winograd.ONEDNN):
        winograd.train_conv(conv, x)  # oneDNN for both passes: the plain convolution, no Function
    assert calls == [(2, 2, False)]


def test_choose_training_algorithm_times_once_per_shape_and_format(kernel, monkeypatch, tmp_path):
    monkeypatch.setattr(winograd, '_TRAIN_CHOICES', {})
    monkeypatch.setenv('HRNET_MM_CHOICES_FILE', str(tmp_path / 'choices.json'))
    timed = []
    real = winograd._fastest
    monkeypatch.setattr(winograd, '_fastest', lambda fns, *a, **k: timed.extend(fns) or real(fns, *a, **k))
    w = torch.randn(32, 32, 3, 3)
    x = torch.randn(1, 32, 16, 12)
    first = winograd.choose_training_algorithm(x, w)
    n = len(timed)
    assert n >= 3 and all(a in (winograd.ONEDNN, *winograd.TILES) for a in first[:2])
    assert first[2] in (False, True) and (not first[2] or winograd.ONEDNN not in first[:2])
    assert winograd.choose_training_algorithm(x, w) == first and len(timed) == n
    winograd.choose_training_algorithm(_cl(x), w)  # another memory format: timed again
    assert len(timed) > n
    assert set(k[-1] for k in winograd.training_choices()) == {0, 1}


def test_training_choices_are_kept_for_later_processes_and_leave_the_global_generator(kernel, monkeypatch, tmp_path):
    """A choice is written to choices_file and a new process (here: an empty in-memory table) takes it from there
    without timing, so a repeated or resumed run computes the same floats; timing draws its random data from a
    generator of its own; an unreadable file or entry is timed again and rewritten."""
    path = tmp_path / 'choices.json'
    monkeypatch.setenv('HRNET_MM_CHOICES_FILE', str(path))
    monkeypatch.setattr(winograd, '_TRAIN_CHOICES', {})
    x, w = _cl(torch.randn(1, 32, 16, 12)), torch.randn(48, 32, 3, 3)
    torch.manual_seed(11)
    state = torch.get_rng_state()
    first = winograd.choose_training_algorithm(x, w)
    assert torch.equal(torch.get_rng_state(), state)
    key = '1,32,16,12,48,{},0'.format(torch.get_num_threads())
    assert json.loads(path.read_text()) == {key: [first[0], first[1], int(first[2])]}

    def fail(*args, **kwargs):
        raise AssertionError('timed again')
    monkeypatch.setattr(winograd, '_TRAIN_CHOICES', {})
    monkeypatch.setattr(winograd, '_fastest', fail)
    assert winograd.choose_training_algorithm(x, w) == first
    for text in ('not json', json.dumps({key: [3, 3, 0], 'a,b': [0, 0, 0]}), json.dumps({key: [2, 2]}),
                 json.dumps({key: [2, 2, 5]})):
        path.write_text(text)
        monkeypatch.setattr(winograd, '_TRAIN_CHOICES', {})
        with pytest.raises(AssertionError, match='timed again'):
            winograd.choose_training_algorithm(x, w)


def _grads(model, x, frozen_norms=False):
    model.train()
    if frozen_norms:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    model.zero_grad(set_to_none=True)
    sum(o.square().mean() for o in model(x)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('tile', winograd.TILES)
def test_hrnet_training_gradients_with_winograd(kernel, any_width, tile):
    """A whole training step of a narrow HRNet with the CPU kernels against its float64 gradients, for three random
    inputs, on maps large enough that no branch has fewer than 12 positions per channel. With frozen norms, which do
    not amplify rounding (tools/benchmark.py check_float32_gradients): Winograd ran (the gradients differ from
    oneDNN's) and is within the bound on every input. With batch statistics, the median over the inputs within 10x
    oneDNN's own float32 error or 1e-3 (F(4x4): 1e-2; it is forced here on 8-channel layers too, and the batch
    statistics of the low-resolution branches amplify its rounding: 9e-4 to 7e-3): there the gradient itself
    jumps where a ReLU input crosses zero, so any float32 rounding can land one input's gradients far away; a wrong
    gradient is off by O(1) on every input."""
    ref = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA), cpu_kernels=False))
    model = HRNet(extra=copy.deepcopy(TINY_EXTRA))
    model.load_state_dict(ref.state_dict())
    for frozen in (True, False):
        errors, onednn_errors = [], []
        for seed in (3, 4, 5):
            x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(seed))
            truth = _grads(copy.deepcopy(ref).double(), x.double(), frozen)
            onednn = _grads(ref, x, frozen)
            with winograd.force_algorithm(tile):
                ours = _grads(model, x, frozen)
            assert ours.keys() == truth.keys()
            assert any(not torch.equal(ours[k], onednn[k]) for k in truth)
            errors.append(grads_l2(ours, truth))
            onednn_errors.append(grads_l2(onednn, truth))
        if frozen:
            assert max(errors) < {2: 1e-4, 4: 1e-3}[tile], (errors, onednn_errors)
        else:
            bound = {2: 1e-3, 4: 1e-2}[tile]
            assert sorted(errors)[1] < max(10 * sorted(onednn_errors)[1], bound), (errors, onednn_errors)


def test_hrnet_winograd_with_checkpointing(kernel, any_width):
    """with_cp recomputes the blocks in the backward pass: the same gradients, Winograd and fused norms included."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    plain = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA)))
    cp = HRNet(extra=copy.deepcopy(TINY_EXTRA), with_cp=True)
    cp.load_state_dict(plain.state_dict())
    with winograd.force_algorithm(4):
        a, b = _grads(plain, x.clone().requires_grad_()), _grads(cp, x.clone().requires_grad_())
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6 * a[k].abs().max().item()) for k in a)


def test_inference_and_scripting_do_not_use_the_training_path(kernel, any_width):
    model = randomize_(HRNet(extra=copy.deepcopy(TINY_EXTRA)))
    x = torch.randn(1, 3, 64, 64)
    with winograd.force_algorithm(4):
        assert kernel_nodes(model.train()(x))['winograd']
        model.eval()
        ref = model(x)
        assert kernel_nodes(model(x.clone().requires_grad_())) == dict(winograd=0, norm=0)
        scripted = torch.jit.script(model)
        assert all(torch.equal(a, b) for a, b in zip(scripted(x), ref))
    assert uses_cpu_kernels(model)  # scripting compiled a plain copy and left the module as it was
