"""oneDNN's convolutions called directly, without torch's cost around each call.

``torch.ops.onednn.qconv2d_pointwise`` (int8) and ``torch.ops.mkldnn._convolution_pointwise`` (float32, bfloat16)
build oneDNN's primitive descriptor and arguments on every call, and the int8 ``binary`` form returns a copy of
the summand it wrote into. Around a 3x3 int8 convolution of 32 channels at 64x48 (78 us inside oneDNN) that is
30-50 us, around a 1x1 one of 256 to 32 channels at 8x6 (5 us) 25-30 us; a whole HRNet-W32 makes about 300 such
calls. :func:`conv` makes the primitive, its reordered weights and its arguments once per layer and input shape,
and each call only wraps the tensors' memory and runs it.

The extension (``csrc/onednn_conv.cpp``) is built against the oneDNN of the PyPI packages ``onednn-cpu-gomp`` (the
library, built with GNU OpenMP, which shares torch's OpenMP runtime and so its thread count) and
``onednn-devel-cpu-gomp`` (the headers), both in ``requirements.txt``; torch exports none of its own oneDNN's
symbols. Where they are missing, or where ``HRNET_MM_ONEDNN`` is 0, :func:`available` is False and the deploy
models call torch's operators.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import sysconfig
import warnings
from typing import Optional, Sequence, Tuple

import torch

from . import extension as extension_tools

_SOURCE = os.path.join(os.path.dirname(os.path.realpath(__file__)), 'csrc', 'onednn_conv.cpp')
_LIBRARY = 'libdnnl.so.3'
_BUILD_ERROR: Optional[str] = None


def enabled() -> bool:
    """False when the environment variable ``HRNET_MM_ONEDNN`` is 0 / false / no / off."""
    return os.environ.get('HRNET_MM_ONEDNN', '1').strip().lower() not in ('0', 'false', 'no', 'off')


def library() -> Optional[Tuple[str, str]]:
    """``(include directory, library directory)`` of the oneDNN packages in this environment, or None when they are
    missing or their oneDNN does not use OpenMP (a second threading runtime beside torch's)."""
    prefixes = dict.fromkeys([sys.prefix, sysconfig.get_config_var('prefix') or sys.prefix])
    for prefix in prefixes:
        include, lib = os.path.join(prefix, 'include'), os.path.join(prefix, 'lib')
        config = os.path.join(include, 'oneapi', 'dnnl', 'dnnl_config.h')
        if not (os.path.isfile(config) and os.path.isfile(os.path.join(lib, _LIBRARY))):
            continue
        with open(config) as f:
            if '#define DNNL_CPU_THREADING_RUNTIME DNNL_RUNTIME_OMP' in f.read():
                return include, lib
    return None


def build_name(found: Optional[Tuple[str, str]] = None) -> str:
    """``hrnet_mm_onednn_{hash}``: a hash of the source and of the oneDNN it is built against (``found``, default
    :func:`library`)."""
    digest = hashlib.sha1()
    with open(_SOURCE, 'rb') as f:
        digest.update(f.read())
    digest.update(repr(found if found is not None else library()).encode())
    return f'hrnet_mm_onednn_{digest.hexdigest()[:10]}'


def extension():
    """The compiled module, or None (disabled, the oneDNN packages are missing, or it cannot be built here:
    :func:`build_error` says why). The first call on a machine compiles it (about half a minute)."""
    return _load() if enabled() else None


@functools.lru_cache(maxsize=None)
def _load():
    global _BUILD_ERROR
    found = library()
    if found is None:
        _BUILD_ERROR = 'the onednn-cpu-gomp and onednn-devel-cpu-gomp packages are not installed'
        return None
    include, lib = found
    name = build_name(found)
    try:
        return extension_tools.load(name, os.path.join(extension_tools.root(), name), [_SOURCE],
                                    what='the direct oneDNN convolution', cflags=['-O2'], include_paths=[include],
                                    ldflags=[f'-L{lib}', f'-l:{_LIBRARY}', f'-Wl,-rpath,{lib}'])
    except Exception as e:  # noqa: BLE001 - no compiler / ninja / headers: torch's operator runs instead
        _BUILD_ERROR = extension_tools.error_line(e)
        warnings.warn(f"hrnet_mm: the direct oneDNN convolution is unavailable, the deploy models call torch's "
                      f'operators ({_BUILD_ERROR})')
        return None


def available() -> bool:
    """Whether :func:`conv` can prepare convolutions here."""
    return extension() is not None


def build_error() -> Optional[str]:
    """Why :func:`extension` returns None (None when it does not, or was not called yet)."""
    if not enabled():
        return 'disabled by HRNET_MM_ONEDNN'
    return _BUILD_ERROR


SUMMAND_NONE, SUMMAND_INTO, SUMMAND_ADD = 0, 1, 2


def conv(input_shape: Sequence[int], weight: torch.Tensor, bias: Optional[torch.Tensor], stride: Sequence[int],
         padding: Sequence[int], dilation: Sequence[int], relu: bool, summand: int = SUMMAND_NONE,
         w_scale: Optional[torch.Tensor] = None, x_scale: float = 1.0, x_zero_point: int = 0,
         y_scale: float = 0.0, y_zero_point: int = 0):
    """oneDNN's convolution prepared for inputs of ``input_shape`` (N, C, H, W), all tensors channels_last.

    Args:
        weight: (K, C, kh, kw), no groups: int8 (then the input is uint8 and the output float32), or float32 or
            bfloat16 (input and output of the same type).
        bias: (K,) or None.
        stride, padding, dilation: Two each (zero padding, the same on both sides).
        relu: Apply a ReLU last.
        summand: Add a tensor of the output's shape and type before the ReLU: :data:`SUMMAND_INTO` writes the
            result into it, :data:`SUMMAND_ADD` reads it into a new output; :data:`SUMMAND_NONE`: no summand.
        w_scale: int8 only: float32 (K,) weight scales.
        x_scale, x_zero_point: int8 only: the input's quantization, ``x = x_scale * (q - x_zero_point)``.
        y_scale, y_zero_point: int8 without a summand only: with ``y_scale > 0`` the result is uint8, quantized
            for the next layer as ``clamp(round_half_even(y / y_scale) + y_zero_point, 0, 255)``.

    Returns:
        An object whose ``run(x, summand=None)`` returns the (N, K, H', W') result (the summand itself with
        :data:`SUMMAND_INTO`); ``output_shape`` is (N, K, H', W').

    Raises:
        RuntimeError: The extension is unavailable (:func:`build_error`), or the arguments do not describe a
            convolution it runs.
    """
    ext = extension()
    if ext is None:
        raise RuntimeError(f'hrnet_mm.ops.onednn is unavailable: {build_error()}')
    return ext.Conv([int(s) for s in input_shape], weight.detach().cpu(),
                    None if bias is None else bias.detach().float().cpu(), [int(s) for s in stride],
                    [int(p) for p in padding], [int(d) for d in dilation], bool(relu), int(summand),
                    None if w_scale is None else w_scale.detach().float().cpu(), float(x_scale), int(x_zero_point),
                    float(y_scale), int(y_zero_point))
