"""Builds hrnet_mm's CPU kernels for this machine: ``python -m hrnet_mm.ops.build``.

``make install`` runs it, so that the extensions (:func:`hrnet_mm.ops.winograd.build_name`, cached under
:func:`hrnet_mm.ops.winograd.build_directory`, and :func:`hrnet_mm.ops.onednn.build_name` beside it) exist before
the first training step or deploy model needs them. A
machine without a C++ compiler or ninja gets a line saying why, and exit status 0: the models then run PyTorch's
layers.
"""
from __future__ import annotations

import sys


def main() -> int:
    """Builds (or finds) the extensions and prints one line about each."""
    from . import onednn, winograd
    if winograd.available():
        print(f'hrnet_mm CPU kernels: {winograd.build_name()} ({winograd.build_directory()})')
    else:
        print(f'hrnet_mm CPU kernels unavailable ({winograd.build_error()}); the models run PyTorch\'s layers',
              file=sys.stderr)
    if onednn.available():
        print(f'hrnet_mm direct oneDNN convolutions: {onednn.build_name()} (oneDNN {onednn.extension().version()})')
    else:
        print(f'hrnet_mm direct oneDNN convolutions unavailable ({onednn.build_error()}); deploy models call '
              'torch\'s operators', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
