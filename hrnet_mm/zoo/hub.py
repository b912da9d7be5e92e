"""Pretrained weights by name: the ``hrnet_mm://`` checkpoint scheme, verified downloads and mirrors.

``init_cfg=dict(type='Pretrained', checkpoint='hrnet_mm://imagenet/w32')`` or
``load_from = 'hrnet_mm://faster-rcnn_hrnetv2p-w32-1x_coco'`` names an entry of the weights table
(:mod:`hrnet_mm.zoo.weights`). The file is downloaded once into torch's hub checkpoint cache
(``$TORCH_HOME/hub/checkpoints``, where mmengine's ``open-mmlab://`` files go too), its sha256 is checked against
the prefix in its published name, and it is written atomically (a temporary file in the cache directory renamed
into place only when complete and verified; nothing is left behind on failure, so a retry downloads again).
hrnet_mm's configs keep the peers' module layouts, so every file loads as it is published.

``HRNET_MM_MIRROR`` redirects downloads: a URL prefix (``https://mirror.example/openmmlab``; the published URL's
path is appended) or a local directory (or ``file://`` URL) holding the files, either under the published path
or by file name alone, for offline machines. ``open-mmlab://`` names are mmengine's and are left alone.

Importing this module registers the scheme with mmengine's ``CheckpointLoader``.
"""
from __future__ import annotations

import hashlib
import os
import os.path as osp
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional, TextIO

from ..models.checkpoint import CheckpointFileError, check_head
from .weights import ZooEntry, get_entry

SCHEME = 'hrnet_mm://'
MIRROR_ENV = 'HRNET_MM_MIRROR'
CHUNK = 1 << 20


def cache_dir() -> str:
    """torch's hub checkpoint cache (``torch.hub.get_dir()/checkpoints``), as mmengine's ``load_url`` uses."""
    import torch.hub
    return osp.join(torch.hub.get_dir(), 'checkpoints')


def sha256_of(path: str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: str, hash_prefix: Optional[str], origin: str) -> None:
    """Raises :class:`CheckpointFileError` unless ``path`` looks like a torch checkpoint with the right hash."""
    with open(path, 'rb') as f:
        head = f.read(512)
    check_head(head, origin)
    if hash_prefix:
        digest = sha256_of(path)
        if not digest.startswith(hash_prefix):
            raise CheckpointFileError(f'{origin}: sha256 {digest[:16]}... does not start with {hash_prefix} '
                                      '(the hash in the published file name): a different or damaged file')


class _Progress:
    """Download progress on stderr: a self-updating line on a terminal, otherwise one line at the start and one
    at the end (logs stay short)."""

    def __init__(self, url: str, total: Optional[int], stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.total, self.start, self.last = total, time.monotonic(), 0.0
        size = f' ({total / 2**20:.1f} MB)' if total else ''
        self.name = osp.basename(urllib.parse.urlparse(url).path) or url
        self.stream.write(f'hrnet_mm: downloading {url}{size}\n')
        self.stream.flush()

    def update(self, received: int) -> None:
        now = time.monotonic()
        if not self.tty or now - self.last < 0.5:
            return
        self.last = now
        pct = f'{100 * received / self.total:5.1f}% ' if self.total else ''
        rate = received / 2**20 / max(now - self.start, 1e-6)
        self.stream.write(f'\r  {self.name}: {pct}{received / 2**20:.1f} MB, {rate:.1f} MB/s')
        self.stream.flush()

    def done(self, received: int) -> None:
        seconds = time.monotonic() - self.start
        self.stream.write(('\r' if self.tty else '') + f'hrnet_mm: downloaded {self.name}: '
                          f'{received / 2**20:.1f} MB in {seconds:.1f} s\n')
        self.stream.flush()


def download(url: str, dest: str, hash_prefix: Optional[str] = None, timeout: float = 60.0) -> str:
    """Downloads ``url`` to ``dest`` atomically and verifies it.

    The data go to a temporary file next to ``dest``; it is checked (complete per ``Content-Length``, not an
    HTML page, a torch file, sha256 prefix) and only then renamed to ``dest``. On any failure the temporary
    file is removed and :class:`CheckpointFileError` names the URL and the problem.
    """
    os.makedirs(osp.dirname(dest) or '.', exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=osp.basename(dest) + '.', suffix='.part', dir=osp.dirname(dest) or '.')
    try:
        received = 0
        with os.fdopen(fd, 'wb') as out:
            try:
                request = urllib.request.Request(url, headers={'User-Agent': 'hrnet_mm'})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    expected = response.headers.get('Content-Length')
                    progress = _Progress(url, int(expected) if expected is not None else None)
                    for chunk in iter(lambda: response.read(CHUNK), b''):
                        out.write(chunk)
                        received += len(chunk)
                        progress.update(received)
            except urllib.error.HTTPError as exc:
                raise CheckpointFileError(f'{url}: HTTP {exc.code} {exc.reason}') from exc
            except (urllib.error.URLError, OSError, ValueError) as exc:
                raise CheckpointFileError(f'{url}: download failed after {received} bytes: '
                                          f'{type(exc).__name__}: {exc}') from exc
        if expected is not None and received != int(expected):
            raise CheckpointFileError(f'{url}: download interrupted: received {received} of {expected} bytes')
        check_file(tmp, hash_prefix, url)
        os.replace(tmp, dest)
        progress.done(received)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def _mirror_source(url: str, mirror: str) -> str:
    """The mirror URL or local path for ``url``."""
    path = urllib.parse.urlparse(url).path.lstrip('/')
    local = mirror[len('file://'):] if mirror.startswith('file://') else mirror
    if osp.isdir(local):
        for candidate in (osp.join(local, path), osp.join(local, osp.basename(path))):
            if osp.isfile(candidate):
                return candidate
        raise CheckpointFileError(f'{osp.basename(path)} is not in the {MIRROR_ENV} directory {local} (looked for '
                                  f'{osp.join(local, path)} and {osp.join(local, osp.basename(path))})')
    if '://' not in mirror:
        raise CheckpointFileError(f'{MIRROR_ENV}={mirror!r} is neither a directory nor a URL prefix')
    return mirror.rstrip('/') + '/' + path


def fetch(url: str, hash_prefix: Optional[str] = None, filename: Optional[str] = None,
          directory: Optional[str] = None) -> str:
    """Returns a local, verified copy of ``url``: the cache file, a mirror directory's file, or a new download.

    A cache file that fails verification is replaced by a fresh download.
    """
    filename = filename or osp.basename(urllib.parse.urlparse(url).path)
    mirror = os.environ.get(MIRROR_ENV, '').strip()
    source = _mirror_source(url, mirror) if mirror else url
    if '://' not in source:  # a file of a local mirror directory: used in place
        check_file(source, hash_prefix, source)
        return source
    dest = osp.join(directory or cache_dir(), filename)
    if osp.isfile(dest):
        try:
            check_file(dest, hash_prefix, dest)
            return dest
        except CheckpointFileError:
            os.unlink(dest)  # a damaged cache file: download again
    return download(source, dest, hash_prefix)


def load_file(path: str, map_location=None) -> dict:
    """Reads a checkpoint file with mmengine's loader; a truncated/corrupt file is a :class:`CheckpointFileError`."""
    from mmengine.runner.checkpoint import CheckpointLoader
    try:
        return CheckpointLoader.load_checkpoint(path, map_location=map_location, logger='silent')
    except Exception as exc:
        raise CheckpointFileError(f'{path}: cannot be read as a checkpoint (truncated or corrupt?): '
                                  f'{type(exc).__name__}: {exc}') from exc


def load_entry(entry: ZooEntry, map_location=None) -> dict:
    """Downloads (once) and loads an entry's file."""
    return load_file(fetch(entry.url, entry.hash_prefix, entry.filename), map_location)


def load_from_hrnet_mm(filename: str, map_location=None) -> dict:
    """mmengine ``CheckpointLoader`` scheme handler of ``hrnet_mm://<entry name>``."""
    name = filename[len(SCHEME):]
    try:
        entry = get_entry(name)
    except KeyError as exc:
        raise CheckpointFileError(f'{filename}: {exc.args[0]}') from exc
    return load_entry(entry, map_location)


def register() -> None:
    """Registers ``hrnet_mm://`` with mmengine's ``CheckpointLoader`` (idempotent)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes=SCHEME, loader=load_from_hrnet_mm, force=True)


register()
