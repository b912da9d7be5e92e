"""The weights table of hrnet_mm as Python objects, read from the metafiles (the one source of truth).

``hrnet_mm/.mim/model-index.yml`` (the repository root's ``model-index.yml`` links to it) imports one
``configs/<task>/metafile.yml`` per task in OpenMMLab's metafile format, which ``mim search hrnet_mm`` and
``mim download hrnet_mm --config NAME`` read as they read mmdet's. :func:`load_table` turns every ``Models``
entry into a :class:`ZooEntry`; :func:`get_entry` finds one by name (``'imagenet/w32'``, a config name such as
``'faster-rcnn_hrnetv2p-w32-1x_coco'``, with or without ``.py`` or the task folder).
"""
from __future__ import annotations

import difflib
import functools
import os
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

PACKAGE_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
HEX_RE = re.compile(r'[0-9a-f]{8,64}')
DATE_RE = re.compile(r'20\d{6}')
TASK_LIBRARY = {'detection': 'mmdet', 'segmentation': 'mmseg', 'pose': 'mmpose', 'classification': 'mmpretrain'}


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint.

    Attributes:
        name: The entry's name: the publishing library's model name (usually its config name), or
            ``imagenet/<arch>`` for ImageNet backbone weights.
        kind: ``'model'`` (a full model of ``config``) or ``'backbone'`` (ImageNet classification weights whose
            backbone part initialises the configs).
        task: ``detection``, ``segmentation``, ``pose`` or ``classification``.
        config: The config path relative to the package (``configs/<task>/<file>.py``).
        url: Where the file is published.
        hash_prefix: The leading hex digits of the file's sha256, as its name carries them.
        sha256: The full sha256 where known, else ``None``.
        source: Where the weights come from (``Converted From``: the publishing project's weights and config).
        license: The license of the weights.
        params: Parameters of the model the entry describes.
        flops: Multiply-adds of its convs and linear layers (the HRNet papers' "FLOPs"), ``flops_input`` says
            for which input and which part.
        metrics: ``{dataset: {metric: value}}`` published by the source.
        arch: For backbone entries, the ``hrnet_mm.HRNet`` arch of the weights.
        training_data: The training data set(s).
        collection: The metafile collection.
    """

    name: str
    kind: str
    task: str
    config: str
    url: str
    hash_prefix: Optional[str]
    sha256: Optional[str]
    source: Dict[str, str]
    license: str
    params: int
    flops: Optional[int]
    flops_input: Optional[str]
    metrics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    arch: Optional[str] = None
    training_data: Any = None
    collection: str = ''

    @property
    def filename(self) -> str:
        """The published file name (the cache file name)."""
        return self.url.rsplit('/', 1)[-1]

    @property
    def config_path(self) -> str:
        """Absolute path of the config."""
        return osp.join(PACKAGE_ROOT, '.mim', self.config)

    @property
    def library(self) -> str:
        """The OpenMMLab library whose runner builds the config."""
        return TASK_LIBRARY[self.task]


def hash_prefix_from_url(url: str) -> Optional[str]:
    """The sha256 prefix that OpenMMLab file names carry: the last ``-``/``_``-separated part of the name that is
    hexadecimal, after a trailing date (``name-<hash>.pth``, ``name-<hash>_<date>.pth``, ``name_<hash>-<date>.pth``,
    ``name_<date>_<time>-<hash>.pth``); ``None`` for a name without one."""
    stem = url.rsplit('/', 1)[-1]
    if not stem.endswith('.pth'):
        return None
    parts = re.split(r'[-_]', stem[:-len('.pth')])
    if len(parts) > 2 and DATE_RE.fullmatch(parts[-1]):
        parts = parts[:-1]
    last = parts[-1] if len(parts) > 1 else ''
    return last if HEX_RE.fullmatch(last) else None


INDEX_ENV = 'HRNET_MM_MODEL_INDEX'


def index_path() -> str:
    """The model index to read: ``$HRNET_MM_MODEL_INDEX`` (a private weights table in the same format) if set,
    else hrnet_mm's own model-index.yml, which mim and mmengine read."""
    return os.environ.get(INDEX_ENV) or osp.join(PACKAGE_ROOT, '.mim', 'model-index.yml')


def _entry(model: Dict[str, Any], metafile: str) -> ZooEntry:
    meta = model.get('Metadata') or {}
    config = model['Config']
    parts = config.split('/')
    task = parts[1] if len(parts) > 2 else ''
    results = model.get('Results') or []
    results = [results] if isinstance(results, dict) else results
    metrics: Dict[str, Dict[str, float]] = {}
    for result in results:
        metrics.setdefault(result['Dataset'], {}).update(result.get('Metrics') or {})
    url = model['Weights']
    return ZooEntry(
        name=model['Name'], kind='backbone' if meta.get('Backbone Arch') else 'model', task=task, config=config,
        url=url, hash_prefix=model.get('Hash Prefix') or hash_prefix_from_url(url), sha256=model.get('SHA256'),
        source=dict(model.get('Converted From') or {}), license=model.get('License', ''),
        params=int(meta['Parameters']), flops=meta.get('FLOPs'), flops_input=meta.get('FLOPs Input'),
        metrics=metrics, arch=meta.get('Backbone Arch'),
        training_data=meta.get('Training Data'), collection=model.get('In Collection', ''))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> Tuple[ZooEntry, ...]:
    with open(path) as f:
        index = yaml.safe_load(f)
    if not isinstance(index, dict) or not isinstance(index.get('Import'), list):
        raise ValueError(f'{path}: a model index needs an Import list')
    entries: List[ZooEntry] = []
    for rel in index['Import']:
        metafile = osp.join(osp.dirname(path), rel)
        with open(metafile) as f:
            meta = yaml.safe_load(f)
        entries.extend(_entry(m, metafile) for m in meta.get('Models') or [])
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f'{path}: duplicate model names {dupes}')
    return tuple(entries)


def load_table(path: Optional[str] = None) -> Tuple[ZooEntry, ...]:
    """Every entry of the metafiles that ``path`` (default: hrnet_mm's model-index.yml) imports."""
    return _load(path or index_path())


def closest(name: str, candidates: Sequence[str], n: int = 3) -> List[str]:
    """Up to ``n`` of ``candidates`` closest to ``name``, best first; ``-`` and ``_`` count as the same (the
    OpenMMLab names use both for one role)."""
    def norm(text: str) -> str:
        return re.sub(r'[-_]+', '-', text.lower())
    by_norm: Dict[str, str] = {}
    for c in candidates:
        by_norm.setdefault(norm(c), c)
    return [by_norm[m] for m in difflib.get_close_matches(norm(name), list(by_norm), n=n, cutoff=0.6)]


def get_entry(name: str, path: Optional[str] = None) -> ZooEntry:
    """The entry called ``name`` (``imagenet/w32``; a config name with or without task folder or ``.py``).

    Raises:
        KeyError: naming close matches when there is no such entry.
    """
    key = name.strip('/')
    key = key[:-3] if key.endswith('.py') else key
    table = load_table(path)
    for entry in table:
        if key in (entry.name, entry.config[len('configs/'):-3], osp.basename(entry.config)[:-3]):
            return entry
    close = closest(key.split('/')[-1], [e.name for e in table])
    hint = f'; did you mean {", ".join(close)}?' if close else '; `mim search hrnet_mm` lists them'
    raise KeyError(f'no hrnet_mm weights called {name!r}{hint}')
