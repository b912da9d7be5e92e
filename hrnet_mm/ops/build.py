"""Builds hrnet_mm's CPU kernels for this machine: ``python -m hrnet_mm.ops.build``.

``make install`` runs it, so that the extension (:func:`hrnet_mm.ops.winograd.build_name`, cached under
:func:`hrnet_mm.ops.winograd.build_directory`) exists before the first training step or deploy model needs it. A
machine without a C++ compiler or ninja gets a line saying why, and exit status 0: the models then run PyTorch's
layers.
"""
from __future__ import annotations

import sys


def main() -> int:
    """Builds (or finds) the extension and prints one line about it."""
    from . import winograd
    if winograd.available():
        print(f'hrnet_mm CPU kernels: {winograd.build_name()} ({winograd.build_directory()})')
    else:
        print(f'hrnet_mm CPU kernels unavailable ({winograd.build_error()}); the models run PyTorch\'s layers',
              file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
