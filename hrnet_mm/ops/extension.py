"""Building hrnet_mm's C++ extensions with torch's ``cpp_extension`` tools: the CPU kernels
(:mod:`hrnet_mm.ops.winograd`) and the direct oneDNN calls (:mod:`hrnet_mm.ops.onednn`).

Each extension is compiled once per environment and source (its name carries a hash of both) into a directory
under :func:`root`, from copies of its sources kept in that directory (:func:`stable_copies`), by the ninja that
``make install`` pins (:func:`ninja_directory`); later processes load the cached build.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import warnings
from typing import Optional, Sequence

import torch


def root() -> str:
    """``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), then one directory per Python and torch
    version and torch installation.

    The builds' compile and link commands name torch's headers and libraries by their path, and ninja rebuilds
    everything when a command changes: two environments (a development venv and a CI clone's, say) sharing one
    directory would rebuild in turn, each for about two minutes. So each torch installation gets its own."""
    default = os.path.join(os.path.expanduser('~'), '.cache', 'torch_extensions')
    base = os.environ.get('TORCH_EXTENSIONS_DIR') or default
    install = hashlib.sha1(os.path.realpath(os.path.dirname(torch.__file__)).encode()).hexdigest()[:8]
    tag = f'hrnet_mm-py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__.split("+")[0]}-{install}'
    return os.path.join(base, tag)


def ninja_directory() -> Optional[str]:
    """The directory of the ninja that the Python package ``ninja`` installs (pinned by ``make install``), to put
    first on PATH while building; None when the package is missing (then PATH's ninja builds).

    The builds always run that one, whatever PATH holds (a venv's bin directory is on PATH in an activated shell,
    not when its python is run by its full path): ninja versions record commands differently in the build's log
    (1.13 and 1.11 do), and each rebuilds from scratch what the other built, about two minutes."""
    try:
        import ninja
        directory = ninja.BIN_DIR
    except (ImportError, AttributeError):
        return None
    return directory if os.path.isfile(os.path.join(directory, 'ninja')) else None


def stable_copies(sources: Sequence[str], directory: str, headers: Sequence[str] = ()) -> list:
    """Copies of an extension's ``sources`` and ``headers`` inside its build directory; returns the sources'. The
    build's name carries a hash of the sources, and ninja rebuilds when a source's path changes, so every checkout
    and install of the same kernel with the same torch (an editable install, another clone, site-packages) shares
    one build instead of rebuilding in turn."""
    paths = []
    for source in tuple(sources) + tuple(headers):
        path = os.path.join(directory, os.path.basename(source))
        with open(source, 'rb') as f:
            text = f.read()
        try:
            with open(path, 'rb') as f:
                same = f.read() == text
        except OSError:
            same = False
        if not same:
            tmp = f'{path}.{os.getpid()}.tmp'
            with open(tmp, 'wb') as f:
                f.write(text)
            os.replace(tmp, path)  # atomic: a concurrent build sees the old or the new file, never half of one
        if source in sources:
            paths.append(path)
    return paths


def load(name: str, directory: str, sources: Sequence[str], headers: Sequence[str] = (), what: str = 'extension',
         cflags: Sequence[str] = (), ldflags: Sequence[str] = (), include_paths: Sequence[str] = ()):
    """The extension ``name``, compiled into ``directory`` from copies of ``sources`` (and ``headers``) on the
    first call there, with one line on stderr naming ``what`` is built; later calls load the cached build.
    torch's logging and warnings about the build (no CUDA, ...) are kept quiet.

    Raises:
        Exception: Whatever torch's ``cpp_extension.load`` raises (no compiler, ninja or headers; a compile
            error); :func:`error_line` gives its one-line summary.
    """
    logger = logging.getLogger('torch.utils.cpp_extension')  # "No CUDA runtime is found": irrelevant on the CPU
    level, old_path = logger.level, os.environ.get('PATH', '')
    ninja = ninja_directory()
    logger.setLevel(logging.ERROR)
    try:
        if ninja:
            os.environ['PATH'] = ninja + os.pathsep + old_path
        from torch.utils import cpp_extension
        os.makedirs(directory, exist_ok=True)
        copies = stable_copies(sources, directory, headers)
        if not os.path.exists(os.path.join(directory, f'{name}.so')):
            print(f'hrnet_mm: building {what} {name} for this machine (once; about a minute)', file=sys.stderr,
                  flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return cpp_extension.load(name, copies, extra_cflags=list(cflags), extra_ldflags=list(ldflags),
                                      extra_include_paths=list(include_paths), build_directory=directory,
                                      verbose=False)
    finally:
        logger.setLevel(level)
        os.environ['PATH'] = old_path


def error_line(e: BaseException) -> str:
    """``'{type}: {last line of the message}'``: a failed build's summary (the compiler's output ends with it)."""
    lines = str(e).strip().splitlines()
    return f'{type(e).__name__}: {lines[-1] if lines else ""}'
