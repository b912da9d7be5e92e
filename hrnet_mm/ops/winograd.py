"""Winograd 3x3 convolutions for the CPU deploy mode (:func:`hrnet_mm.deploy.to_deploy`).

Most of HRNet's arithmetic is 3x3 stride-1 convolutions on small maps. Direct convolution (oneDNN) already runs
them near the processor's peak multiply rate, so the remaining speed has to come from doing fewer
multiplications: Winograd's F(4x4, 3x3) computes 16 outputs of a channel pair with 36 products instead of 144,
F(2x2, 3x3) 4 with 16 instead of 36 (Lavin & Gray, CVPR 2016). The kernel is in ``hrnet_mm/ops/csrc/``
(``forward.cpp``), built once per machine with torch's C++ extension tools (a C++ compiler and ninja; about a
minute) and cached under ``~/.cache/torch_extensions`` (:func:`build_directory`). Without a compiler, or with
``HRNET_MM_WINOGRAD=0`` in the environment, nothing uses it and the deploy model runs oneDNN convolutions only.

Accuracy: the transforms are exact in real arithmetic; in float32 F(4x4, 3x3) is about 10x less exact than direct
convolution (about 1e-5 of the output's largest value per layer instead of 1e-6), F(2x2, 3x3) about as exact.

The bfloat16 deploy model (``to_deploy(precision='bf16')``) has its own kernel (``bf16.cpp``, AVX-512 builds on
processors with AVX512_BF16: :func:`bf16_available`): bfloat16 input, transformed input and weight, products on
the processor's bfloat16 dot product, float32 accumulators and transforms. Rounding the transformed operands to
bfloat16 gives a layer's output about 1.3x (F(2x2, 3x3)) and 5x (F(4x4, 3x3)) the rms error of a direct bfloat16
convolution, small beside the rounding of the bfloat16 activations that a whole network accumulates
(:data:`BF16_TILES`).

Which of oneDNN, F(2x2) and F(4x4) is fastest depends on the shape and the processor, so
:func:`choose_algorithm` times them once per shape in the process (a few milliseconds each) and remembers the
result.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import time
import warnings
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from . import extension as extension_tools
from . import hugepages

ONEDNN = 0  # algorithm ids: 0 = oneDNN direct convolution, 2 / 4 = Winograd F(2x2, 3x3) / F(4x4, 3x3)
TILES = (2, 4)
# bfloat16 (bf16.cpp): both tiles. Rounding the transformed input and weight to bfloat16 gives F(4x4) about 5x the
# rms error of a direct bfloat16 convolution per layer (F(2x2) 1.3x), but a whole network's error is dominated by
# the bfloat16 activations between the layers: random-weight W32 1.8e-2 of its largest output against 1.3-1.5e-2,
# and the task metrics of the README's four demo models within 0.16 points (docs/benchmarks.md)
BF16_TILES = (2, 4)

# realpath: one build however the package is reached (an editable install may link site-packages to the checkout)
_CSRC = os.path.join(os.path.dirname(os.path.realpath(__file__)), 'csrc')
# one extension: the Winograd convolutions (float32; bfloat16 in bf16.cpp), the fused batch norm of
# hrnet_mm.ops.fused_norm (norm.cpp), the int8 deploy model's activation quantization (quantize.cpp) and the
# deploy models' fuse step (upsample_add.cpp)
_SOURCES = tuple(os.path.join(_CSRC, f) for f in ('forward.cpp', 'bf16.cpp', 'weight_grad.cpp', 'train.cpp',
                                                  'norm.cpp', 'quantize.cpp', 'upsample_add.cpp',
                                                  'module.cpp'))
_HEADERS = tuple(os.path.join(_CSRC, f) for f in ('winograd.h', 'transforms.h', 'gemm.h'))
_BUILD_ERROR: Optional[str] = None


def _matrices(tile: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B^T, G, A^T) of F(tile x tile, 3x3) in float64, interpolation points 0, +-1, +-2 (and infinity)."""
    if tile == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif tile == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
             [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f'Winograd tile must be one of {TILES}, got {tile!r}')
    return tuple(torch.tensor(m, dtype=torch.float64) for m in (bt, g, at))


def transform_weight(weight: torch.Tensor, tile: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``U[p] = (G w G^T)[p]`` for a (K, C, 3, 3) weight: a (P, C, K) tensor of ``dtype``, P = (tile + 2) ** 2,
    computed in float64."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f'Winograd needs a (K, C, 3, 3) weight, got {tuple(weight.shape)}')
    _, g, _ = _matrices(tile)
    a = tile + 2
    k, c = weight.shape[:2]
    u = torch.einsum('pi,kcij,qj->pqck', g, weight.detach().double().cpu(), g)
    return u.reshape(a * a, c, k).to(dtype)


def pack_weight(u: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The kernel's layout of a transformed (P, C, K) weight: K padded with zero columns to K8, a multiple of 8,
    and each plane stored as 16-column panels (C x 16, contiguous; the last one C x 8 when K8 % 16 == 8), so that
    the matrix-product kernel reads each panel as one stream. For ``dtype=torch.bfloat16`` (C even) each panel
    holds pairs of rows, (C / 2, 16, 2), the operand layout of AVX512_BF16's dot product. Returned as a contiguous
    (P, C, K8) tensor of ``dtype``."""
    p, c, k = u.shape
    bf16 = dtype == torch.bfloat16
    if bf16 and c % 2:
        raise ValueError(f'the bfloat16 Winograd kernel needs an even number of input channels, got {c}')
    u = torch.nn.functional.pad(u, (0, -k % 8))
    panels = []
    for j in range(0, u.shape[2], 16):
        panel = u[:, :, j:j + 16]
        if bf16:
            panel = panel.reshape(p, c // 2, 2, -1).transpose(2, 3)
        panels.append(panel.reshape(p, -1))
    return torch.cat(panels, dim=1).reshape(p, c, -1).to(dtype).contiguous()


def prepare_weight(weight: torch.Tensor, tile: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``pack_weight(transform_weight(weight, tile), dtype)`` (transformed in float64, rounded once to ``dtype``):
    what :func:`conv` takes for inputs of ``dtype``."""
    return pack_weight(transform_weight(weight, tile, torch.float64), dtype)


def reference_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], tile: int) -> torch.Tensor:
    """The same F(tile x tile, 3x3) algorithm written with torch ops (slow; for tests and as documentation)."""
    bt, _, at = _matrices(tile)
    a = tile + 2
    n, c, h, w = x.shape
    th, tw = -(-h // tile), -(-w // tile)
    xp = torch.nn.functional.pad(x, (1, tw * tile + 1 - w, 1, th * tile + 1 - h))
    d = xp.unfold(2, a, tile).unfold(3, a, tile)  # n, c, th, tw, a, a
    v = torch.einsum('pi,nctuij,qj->pqntuc', bt.to(x), d, bt.to(x))
    u = transform_weight(weight, tile, x.dtype).to(x.device).reshape(a, a, c, -1)
    m = torch.einsum('pqntuc,pqck->pqntuk', v, u)
    y = torch.einsum('ip,pqntuk,jq->nktiuj', at.to(x), m, at.to(x)).reshape(n, -1, th * tile, tw * tile)
    y = y[:, :, :h, :w]
    return y if bias is None else y + bias.to(x).view(1, -1, 1, 1)


def build_name() -> str:
    """The extension's name on this machine: ``hrnet_mm_cpu_kernels_{avx512|avx2|generic}_{hash}`` (the
    Winograd convolutions and the fused batch norm)."""
    return _build_flags()[0]


def _build_flags() -> Tuple[str, list]:
    """Extension name and compiler flags for the widest instruction set that torch reports for this processor:
    AVX-512 (with AVX2/FMA), AVX2/FMA, or portable code. ``HRNET_MM_CPU_ISA=avx2`` (or ``generic``) builds for a
    narrower one. The name carries the instruction set, so a cache shared by different machines never loads code
    the processor cannot run, and a hash of the source and flags, so a changed kernel never loads an old build."""
    isa = _isa()
    # AVX-512: 512-bit registers where the kernel asks for them; the compiler's own vectorisation stays 256-bit
    flags = ['-O3', '-fopenmp'] + {'avx512': ['-mavx2', '-mfma', '-mavx512f', '-mprefer-vector-width=256'],
                                   'avx2': ['-mavx2', '-mfma'], 'generic': []}[isa]
    digest = hashlib.sha1()
    for path in _SOURCES + _HEADERS:
        with open(path, 'rb') as f:
            digest.update(f.read())
    digest.update(' '.join(flags).encode())
    digest = digest.hexdigest()[:10]
    return f'hrnet_mm_cpu_kernels_{isa}_{digest}', flags


ISAS = ('generic', 'avx2', 'avx512')  # narrowest first


def _isa() -> str:
    """The instruction set to build for: the widest of :data:`ISAS` that torch reports for this processor, or
    ``HRNET_MM_CPU_ISA`` where that names a narrower one."""
    capability = torch.backends.cpu.get_cpu_capability().lower()
    widest = 'avx512' if capability.startswith('avx512') else 'avx2' if capability.startswith('avx2') else 'generic'
    asked = os.environ.get('HRNET_MM_CPU_ISA', '').strip().lower()
    if asked in ISAS and ISAS.index(asked) < ISAS.index(widest):
        return asked
    return widest


def enabled() -> bool:
    """False when the environment variable ``HRNET_MM_WINOGRAD`` is 0 / false / no / off."""
    return os.environ.get('HRNET_MM_WINOGRAD', '1').strip().lower() not in ('0', 'false', 'no', 'off')


def extension():
    """The compiled kernel module, or None (disabled by ``HRNET_MM_WINOGRAD=0``, or it cannot be built here:
    :func:`build_error` says why). The first call on a machine compiles it (about a minute); later calls load the
    cached build."""
    return _load() if enabled() else None


@functools.lru_cache(maxsize=None)
def _load():
    global _BUILD_ERROR
    name, flags = _build_flags()
    try:
        ext = extension_tools.load(name, build_directory(), _SOURCES, _HEADERS, 'the CPU kernels', flags,
                                   ['-fopenmp'])
    except Exception as e:  # noqa: BLE001 - no compiler / ninja / headers: run without Winograd
        _BUILD_ERROR = extension_tools.error_line(e)
        warnings.warn(f'hrnet_mm: Winograd convolutions and fused norms unavailable, the deploy mode uses oneDNN '
                      f'only and training torch\'s layers ({_BUILD_ERROR}). '
                      'They need a C++ compiler and ninja (pip install ninja).')
        return None
    from . import fake  # the build registered the operators torch.ops.hrnet_mm.*: now their fake kernels
    fake.register()
    return ext


def build_directory() -> str:
    """Where the kernel is built: one directory per :func:`build_name` under
    :func:`hrnet_mm.ops.extension.root` (one per Python and torch version and installation)."""
    directory = os.path.join(extension_tools.root(), build_name())
    os.makedirs(directory, exist_ok=True)
    return directory


def _stable_sources(directory: str) -> list:
    """Copies of the kernel's sources inside its build directory (:func:`hrnet_mm.ops.extension.stable_copies`)."""
    return extension_tools.stable_copies(_SOURCES, directory, _HEADERS)


@torch.compiler.assume_constant_result  # torch.compile: a fact about the machine, decided while tracing
def available() -> bool:
    """Whether the Winograd kernel is built (or can be built) and enabled."""
    return extension() is not None


@functools.lru_cache(maxsize=None)
def _bf16_supported(ext) -> bool:
    return bool(ext.bf16_supported())


def bf16_available() -> bool:
    """Whether the bfloat16 Winograd kernel runs here: :func:`available`, an AVX-512 build and a processor with
    AVX512_BF16."""
    ext = extension()
    return ext is not None and _bf16_supported(ext)


def build_error() -> Optional[str]:
    """Why :func:`extension` returns None (None when it does not, or was not called yet)."""
    if not enabled():
        return 'disabled by HRNET_MM_WINOGRAD'
    return _BUILD_ERROR


def conv(x: torch.Tensor, u: torch.Tensor, out_channels: int, bias: Optional[torch.Tensor], tile: int,
         residual: Optional[torch.Tensor] = None, relu: bool = False, inplace: bool = False) -> torch.Tensor:
    """``relu?(conv3x3(x, w, bias, padding=1) [+ residual])`` with ``u = prepare_weight(w, tile, x.dtype)`` and
    ``out_channels = w.shape[0]``; ``x`` and ``residual`` channels_last on the CPU, float32, or bfloat16 where
    :func:`bf16_available` (then the result is bfloat16 too; ``bias`` float32 or bfloat16). ``inplace`` writes the
    result into ``residual``.

    Runs the loaded build whatever ``HRNET_MM_WINOGRAD`` says now: the variable decides new choices
    (:func:`available`), so a model that chose a tile keeps working, and the hot path reads no environment."""
    if inplace:
        kernel(inplace=True)(x, u, out_channels, bias, residual, relu, tile)
        return residual
    return kernel()(x, u, out_channels, bias, residual, relu, tile)


def kernel(inplace: bool = False):
    """The operator behind :func:`conv`, called as ``op(x, u, out_channels, bias, residual, relu, tile)`` (note the
    order: ``tile`` last): ``torch.ops.hrnet_mm.winograd_conv3x3`` or, with ``inplace``, its form that writes into
    ``residual`` and returns nothing. For callers that bind it once and call it often."""
    if _load() is None:
        raise RuntimeError(f'hrnet_mm Winograd kernel unavailable: {_BUILD_ERROR}')
    return (torch.ops.hrnet_mm.winograd_conv3x3_add_ if inplace else torch.ops.hrnet_mm.winograd_conv3x3).default


_CHOICES: Dict[Tuple[int, ...], int] = {}
_FORCED: Optional[int] = None


@contextlib.contextmanager
def force_algorithm(algorithm: int) -> Iterator[None]:
    """Within the block, :func:`choose_algorithm` returns ``algorithm`` (:data:`ONEDNN`, 2 or 4) without timing
    anything, for shapes seen for the first time (modules keep what they chose before); for bfloat16 inputs, a tile
    outside :data:`BF16_TILES` gives :data:`ONEDNN`. For tests and experiments."""
    global _FORCED
    if algorithm not in (ONEDNN, *TILES):
        raise ValueError(f'algorithm must be one of {(ONEDNN, *TILES)}, got {algorithm!r}')
    old, _FORCED = _FORCED, algorithm
    try:
        yield
    finally:
        _FORCED = old


def _cache_bytes() -> int:
    """The largest CPU cache (bytes; 32 MiB when the system does not say)."""
    sizes = []
    for path in glob.glob('/sys/devices/system/cpu/cpu0/cache/index*/size'):
        try:
            with open(path) as f:
                text = f.read().strip().upper()
            scale = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip('KMG')) * scale)
        except (OSError, ValueError):
            continue
    return max(sizes, default=32 << 20)


def _fastest(candidates: Dict[int, Callable[[], object]], data: torch.Tensor, evict: Optional[torch.Tensor],
             rounds: int = 5, flush: Optional[Dict[int, Callable[[], object]]] = None) -> int:
    """The key of the fastest of ``candidates`` as they run inside a network, where each layer's weights come from
    memory (the whole network's do not fit in the caches) and its input ``data`` was just written (by the layer
    before). Before each timed call the weights leave the caches: ``flush[key]()`` drops that candidate's own
    weights, or, without ``flush``, writing ``evict`` (twice the largest cache) drops everything. The candidates
    take turns, round by round, and each keeps its best time: on a shared machine, noise only ever adds time, and
    a burst of it then hits one round of every candidate instead of all the rounds of one (timing them one after
    the other picked a different winner for the same shape from one process to the next)."""
    best = {key: float('inf') for key in candidates}
    for fn in candidates.values():
        fn()  # first calls allocate and fault in memory
    for _ in range(rounds):
        for key, fn in candidates.items():
            if flush is not None:
                flush[key]()
            else:
                evict.fill_(0.0)
            data.mul_(1.0)
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    return min(best, key=best.get)


def flush_cache(tensor: torch.Tensor) -> bool:
    """Drops ``tensor``'s bytes from every cache level (clflush; AArch64: dc civac). False where the build has no
    such instruction."""
    return flush_memory(tensor.data_ptr(), tensor.numel() * tensor.element_size())


def flush_memory(address: int, nbytes: int) -> bool:
    """Drops the bytes ``[address, address + nbytes)`` from every cache level; see :func:`flush_cache`."""
    ext = _load()
    return ext is not None and ext.flush_cache(address, nbytes)


def choose_algorithm(x: torch.Tensor, weight: torch.Tensor, onednn: Callable[[torch.Tensor], torch.Tensor],
                     onednn_weight: Optional[Tuple[int, int]] = None) -> int:
    """The fastest of oneDNN (``onednn(x)`` runs it) and the Winograd tiles (:data:`TILES` for float32,
    :data:`BF16_TILES` for bfloat16) for the 3x3 stride-1 convolution of ``x``'s shape and type with ``weight``'s
    shape, timed once per shape, type and thread count in this process, on random data of those shapes and as in a
    whole network: the input just written, the rest of the working set (the kernels' scratch buffers) in the
    caches, and the weights not (Winograd's transformed weights are 1.8x (F(2x2)) and 4x (F(4x4)) the size of the
    originals, which decides it for low-resolution layers). The Winograd weights are in huge pages, as in a deploy
    model, and flushed from the caches before each timed call, as is oneDNN's when ``onednn_weight`` gives its
    (address, bytes); without it, or where nothing can flush, every call starts from caches emptied by writing a
    buffer twice their size, which also empties them of the scratch buffers and leaves them dirty, so that every
    candidate runs far slower than in a network and noise decides more often. Returns :data:`ONEDNN`, 2 or 4."""
    bf16 = x.dtype == torch.bfloat16
    if not (bf16_available() if bf16 else available()):
        return ONEDNN
    n, c, h, w = x.shape
    if _FORCED is not None:  # bfloat16 runs only its tiles, and those on an even number of channels
        return ONEDNN if bf16 and (_FORCED not in BF16_TILES or c % 2) else _FORCED
    key = (n, c, h, w, weight.shape[0], torch.get_num_threads()) + ((torch.bfloat16,) if bf16 else ())
    if key in _CHOICES:
        return _CHOICES[key]
    gen = torch.Generator().manual_seed(0)  # not the global generator: a run's random draws stay its own
    data = torch.randn(n, c, h, w, generator=gen).to(x.dtype).contiguous(memory_format=torch.channels_last)
    arena = hugepages.Arena()  # the candidates' weights, freed with it when the choice is made
    candidates = {ONEDNN: lambda: onednn(data)}
    flush = {ONEDNN: (lambda: flush_memory(*onednn_weight)) if onednn_weight else None}
    for tile in BF16_TILES if bf16 else TILES:
        if min(h, w) < tile or (bf16 and c % 2):  # a map smaller than one tile would be mostly padding
            continue
        u = arena.copy(prepare_weight(torch.randn(tuple(weight.shape), generator=gen), tile, x.dtype))
        candidates[tile] = functools.partial(conv, data, u, weight.shape[0], None, tile)
        flush[tile] = functools.partial(flush_cache, u)
    if all(f is not None and f() for f in flush.values()):
        best = _fastest(candidates, data, None, flush=flush)
    else:
        best = _fastest(candidates, data, torch.empty(2 * _cache_bytes() // 4))  # freed when the choice is made
    _CHOICES[key] = best
    return best


def choices() -> Dict[Tuple[int, ...], int]:
    """The algorithm chosen so far for each (N, C, H, W, K, threads), (..., torch.bfloat16) for bfloat16 inputs (a
    copy)."""
    return dict(_CHOICES)


# --- training ----------------------------------------------------------------------------------------------------
# In training the weight changes every step, so it is transformed on every call (``winograd_weight``, a few
# microseconds to a millisecond), and the backward pass runs Winograd too: the input gradient is the 3x3
# convolution of the output gradient with the weight transposed and turned by 180 degrees, and the weight gradient
# is the gradient of the transformed weight, ``dU[p] = V[p]^T dM[p]`` (a matrix product over the tiles per plane p),
# mapped back through the weight transform: one kernel (``winograd_conv_weight_grad``) transforms the input and the
# output gradient, multiplies block by block in the cache and maps each block straight back, so that dU is never
# written out (it is 1.8x (F(2x2)) or 4x (F(4x4)) the size of the weight); the sum over the tiles is a sum of
# partial sums of 64 tiles, which keeps a large map's weight gradient as exact as a small one's. Which tile, or
# oneDNN, serves the forward and input gradient, which the weight gradient, and whether the two gradients run side by
# side (one thread each, same floats), is timed once per shape and machine (:func:`choose_training_algorithm`) and
# kept in a file, so that later runs compute the same floats.

_TRAIN_CHOICES: Dict[Tuple[int, ...], Tuple[int, int, bool]] = {}
TRAIN_MIN_CHANNELS = 32
TRAIN_TILES = TILES  # F(2x2) alone gives 1.11x instead of 1.23x per W32 channels_last step (same run of each)


def _train_conv3x3(x: torch.Tensor, weight: torch.Tensor, tile: int, weight_tile: int,
                   together: bool = False) -> torch.Tensor:
    """``conv2d(x, weight, padding=1)``, differentiable, float32 CPU: the forward pass and the input gradient by
    ``tile``, the weight gradient by ``weight_tile`` (:data:`ONEDNN`, 2 or 4 each), and with ``together`` the two
    gradients side by side, one thread each (where both are Winograd and torch has two intra-op threads; the same
    floats either way). The output and the input gradient keep the input's memory format, the weight gradient the
    weight's. The operator ``torch.ops.hrnet_mm.train_conv3x3`` (its autograd node is C++: a Python Function's calls
    cost about 50 us per layer, forward and backward, which is 2-4% of a W32 training step); its backward is not
    differentiable (``create_graph=True`` raises)."""
    return torch.ops.hrnet_mm.train_conv3x3(x, weight, tile, weight_tile, together)


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def cpu_training_step(x: torch.Tensor) -> bool:
    """Whether ``x`` enters a step that hrnet_mm's CPU training kernels serve: a 4-d float32 CPU map with
    gradients being recorded, not under autocast, tracing or ONNX export, and the kernel available (TorchScript
    never gets here: the callers are unused when scripted). ``torch.compile`` traces the kernels as the operators
    they are (their fake kernels: :mod:`hrnet_mm.ops.fake`)."""
    return (x.dtype == torch.float32 and x.device.type == 'cpu' and x.dim() == 4 and torch.is_grad_enabled()
            and not torch.is_autocast_enabled('cpu') and not torch.jit.is_tracing()
            and not torch.onnx.is_in_onnx_export() and available())


def trainable(conv: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`train_conv` computes ``conv(x)`` with Winograd: a plain ``nn.Conv2d`` 3x3, stride 1, padding
    1, no dilation or groups, zero padding, no bias, at least :data:`TRAIN_MIN_CHANNELS` channels in and out, a
    float32 CPU weight, an input or weight that needs a gradient, and :func:`cpu_training_step`."""
    return (type(conv) is torch.nn.Conv2d and min(conv.in_channels, conv.out_channels) >= TRAIN_MIN_CHANNELS
            and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == 'zeros' and conv.bias is None
            and conv.weight.dtype == torch.float32 and conv.weight.device.type == 'cpu'
            and (x.requires_grad or conv.weight.requires_grad) and cpu_training_step(x))


def train_conv(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a training step: by Winograd in the forward and backward passes where :func:`trainable`
    and where :func:`choose_training_algorithm` finds it faster than oneDNN, else ``conv(x)`` itself. The result
    has the input's memory format either way."""
    if not trainable(conv, x):
        return conv(x)
    tile, weight_tile, together = choose_training_algorithm(x, conv.weight)
    if tile == ONEDNN and weight_tile == ONEDNN:
        return conv(x)
    return _train_conv3x3(x, conv.weight, tile, weight_tile, together)


def choose_training_algorithm(x: torch.Tensor, weight: torch.Tensor) -> Tuple[int, int, bool]:
    """(algorithm of the forward pass and input gradient, algorithm of the weight gradient, whether the backward
    computes the two gradients side by side) for a training step of the 3x3 convolution of ``x``'s shape and memory
    format with ``weight``'s: each algorithm :data:`ONEDNN`, 2 or 4, side by side where both are Winograd, there
    are two threads and it is the faster way (on low-resolution maps neither gradient gains as much from a second
    thread as the two gain from running at once). All timed once per shape, format and thread count on this
    machine, on random data (from a generator of its own), and kept for later processes in :func:`choices_file`.
    The times include what each choice costs around the convolution: the weight transforms and, for a contiguous
    (NCHW) input, the copies to channels_last and back (the kernel works on channels_last; the result keeps the
    input's format). ``force_algorithm`` applies to both algorithms (the gradients then one after the other)."""
    if not available():
        return ONEDNN, ONEDNN, False
    if _FORCED is not None:
        return _FORCED, _FORCED, False
    n, c, h, w = x.shape
    return _training_choice(n, c, h, w, weight.shape[0], int(not _is_channels_last(x)),
                            _is_channels_last(weight))


@torch.compiler.assume_constant_result  # torch.compile: looked up (or timed) while tracing, a constant in the graph
def _training_choice(n: int, c: int, h: int, w: int, k: int, nchw: int,
                     weight_channels_last: bool) -> Tuple[int, int, bool]:
    key = (n, c, h, w, k, torch.get_num_threads(), nchw)
    choice = _TRAIN_CHOICES.get(key)
    if choice is None:
        choice = _TRAIN_CHOICES[key] = (_read_training_choices().get(key)
                                        or _time_training_choice(key, weight_channels_last))
    return choice


def _time_training_choice(key: Tuple[int, ...], weight_channels_last: bool) -> Tuple[int, int, bool]:
    n, c, h, w, k = key[:5]
    nchw = bool(key[-1])
    ext = _load()
    fmt = torch.contiguous_format if nchw else torch.channels_last
    cb = torch.ops.aten.convolution_backward
    gen = torch.Generator().manual_seed(0)  # not the global generator: a run's random draws stay its own
    with torch.no_grad():
        data = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=fmt)
        grad = torch.randn(n, k, h, w, generator=gen).contiguous(memory_format=fmt)
        wt = torch.randn(k, c, 3, 3, generator=gen).contiguous(
            memory_format=torch.channels_last if weight_channels_last else torch.contiguous_format)
        evict = torch.empty(2 * _cache_bytes() // 4)
        tiles = [t for t in TRAIN_TILES if min(h, w) >= t]

        def onednn_conv() -> None:
            torch.conv2d(data, wt, None, 1, 1)
            cb(grad, data, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])

        def winograd_conv(tile: int) -> None:
            xl = data.contiguous(memory_format=torch.channels_last)
            y = ext.winograd_train_forward(xl, wt, tile)
            dx = ext.winograd_train_input_grad(grad.contiguous(memory_format=torch.channels_last), xl, wt, tile)
            if nchw:
                y.contiguous(), dx.contiguous()

        tile = _fastest({ONEDNN: onednn_conv, **{t: functools.partial(winograd_conv, t) for t in tiles}}, data, evict)
        weight_tile = ONEDNN
        if tile != ONEDNN or not nchw:  # with oneDNN for both passes on NCHW, the weight gradient stays oneDNN too
            xl, gl = (t.contiguous(memory_format=torch.channels_last) for t in (data, grad))
            weight_tile = _fastest({a: functools.partial(ext.winograd_train_weight_grad, xl, gl, wt, a)
                                    for a in [ONEDNN, *tiles]}, data, evict)
        together = False
        if tile != ONEDNN and weight_tile != ONEDNN and torch.get_num_threads() == 2:
            # a gain of about a tenth at most: more rounds than for the algorithms, so that noise rarely decides it
            together = bool(_fastest({b: functools.partial(ext.winograd_train_gradients, gl, xl, wt, tile,
                                                           weight_tile, bool(b)) for b in (0, 1)}, data, evict,
                                     rounds=11))
    _save_training_choice(key, (tile, weight_tile, together))
    return tile, weight_tile, together


def choices_file() -> str:
    """Where the training choices are kept for the next process: ``$HRNET_MM_CHOICES_FILE``, by default
    ``training_choices.json`` in the kernel's :func:`build_directory` (one per machine kind and kernel version).
    A choice decides the rounding of every later step, so a run on this machine, a repeated run, and an interrupted
    run that resumes compute the same floats as the first (timings alone differ from process to process on a shared
    machine). Delete the file to time again."""
    return os.environ.get('HRNET_MM_CHOICES_FILE') or os.path.join(build_directory(), 'training_choices.json')


def _read_training_choices() -> Dict[Tuple[int, ...], Tuple[int, int, bool]]:
    """The choices in :func:`choices_file` (entries that are not valid choices are left out; no file: none)."""
    try:
        with open(choices_file()) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    out: Dict[Tuple[int, ...], Tuple[int, int, bool]] = {}
    if not isinstance(data, dict):
        return out
    for k, v in data.items():
        try:
            key = tuple(int(i) for i in k.split(','))
            choice = (int(v[0]), int(v[1]), bool(v[2]))
        except (AttributeError, TypeError, ValueError, IndexError):
            continue
        if len(key) == 7 and len(v) == 3 and all(a in (ONEDNN, *TILES) for a in choice[:2]) and v[2] in (0, 1):
            out[key] = choice
    return out


def _save_training_choice(key: Tuple[int, ...], choice: Tuple[int, int, bool]) -> None:
    """Adds one choice to :func:`choices_file` (written whole to a temporary file and renamed into place, so a
    concurrent reader sees the old or the new file; a concurrent writer's new entry may be lost and is timed again
    next time). A file that cannot be written only costs the next process the timing."""
    path = choices_file()
    data = {','.join(map(str, k)): [v[0], v[1], int(v[2])] for k, v in _read_training_choices().items()}
    data[','.join(map(str, key))] = [choice[0], choice[1], int(choice[2])]
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, 'w') as f:
            json.dump(data, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def training_choices() -> Dict[Tuple[int, ...], Tuple[int, int, bool]]:
    """The (forward/input-gradient algorithm, weight-gradient algorithm, side by side) chosen so far per
    (N, C, H, W, K, threads, NCHW)."""
    return dict(_TRAIN_CHOICES)
