"""The HRNet recipes and checkpoints that the installed peer libraries ship.

:func:`hrnet_configs` finds every config under ``<library>/.mim/configs`` whose model has an ``HRNet`` backbone
(``_base_`` files excluded); :func:`published_weights` reads the library's metafiles for the checkpoints of those
configs, with the few errors of the peers' metafiles corrected (:data:`METAFILE_FIXES`, each with its reason).
Both read the installed packages only, so a new release of a library is picked up by running the generator again.
"""
from __future__ import annotations

import ast
import copy
import functools
import glob
import importlib.util
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .recipes import LIBRARIES


class LibraryNotInstalled(RuntimeError):
    """A peer library (or its packaged configs) is not installed."""


def library_version(library: str) -> str:
    """The installed version of ``library``."""
    from importlib.metadata import PackageNotFoundError, version
    dist = {'mmseg': 'mmsegmentation'}.get(library, library)
    try:
        return version(dist)
    except PackageNotFoundError as exc:
        raise LibraryNotInstalled(f'{library} is not installed; `make install` installs the pinned stack') from exc


def config_root(library: str) -> str:
    """``<library>/.mim/configs`` of the installed package."""
    if library not in LIBRARIES:
        raise LibraryNotInstalled(f'unknown library {library!r}; hrnet_mm generates configs for {LIBRARIES}')
    spec = importlib.util.find_spec(library)
    if spec is None or not spec.submodule_search_locations:
        raise LibraryNotInstalled(f'{library} is not installed; `make install` installs the pinned stack')
    root = osp.join(list(spec.submodule_search_locations)[0], '.mim', 'configs')
    if not osp.isdir(root):
        raise LibraryNotInstalled(f'{library} is installed without its configs ({root} is missing); reinstall it '
                                  'from a wheel or sdist that ships .mim/configs')
    return root


def _bases(path: str, root: str) -> List[str]:
    """The ``_base_`` files of a config in the same library, read from its syntax tree (nothing is executed)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names: List[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets):
            value = node.value
            items = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
            names += [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]
    out = []
    for name in names:
        if '::' in name:
            out.append(name)  # another package's file: loaded in full below
        else:
            out.append(osp.normpath(osp.join(osp.dirname(path), name)))
    return out


def _mentions_hrnet(path: str, root: str, memo: Dict[str, bool]) -> bool:
    """Whether ``path`` or one of its ``_base_`` files mentions ``HRNet`` (a cheap pre-filter)."""
    if path in memo:
        return memo[path]
    memo[path] = False
    if '::' in path:  # another package's file: decided by loading the config
        memo[path] = True
        return True
    if not osp.isfile(path):  # a broken _base_ of the peer's (some mmdet tracking configs): not an HRNet
        return False
    with open(path) as f:
        found = 'HRNet' in f.read()
    memo[path] = found or any(_mentions_hrnet(b, root, memo) for b in _bases(path, root))
    return memo[path]


@functools.lru_cache(maxsize=None)
def load_config(library: str, rel: str):
    """The parsed peer config ``rel`` (relative to the library's config root), cached."""
    from mmengine.config import Config
    return Config.fromfile(osp.join(config_root(library), rel))


@functools.lru_cache(maxsize=None)
def hrnet_configs(library: str) -> Tuple[str, ...]:
    """Paths (relative to :func:`config_root`) of the library's configs whose model has an ``HRNet`` backbone."""
    root = config_root(library)
    memo: Dict[str, bool] = {}
    found = []
    for path in sorted(glob.glob(osp.join(root, '**', '*.py'), recursive=True)):
        rel = osp.relpath(path, root)
        if '_base_' in rel.split(osp.sep) or not _mentions_hrnet(path, root, memo):
            continue
        model = load_config(library, rel).get('model')
        if isinstance(model, dict) and (model.get('backbone') or {}).get('type') == 'HRNet':
            found.append(rel.replace(osp.sep, '/'))
    return tuple(found)


@dataclass
class PeerWeights:
    """One published checkpoint of a peer library, as its metafile describes it.

    Attributes:
        library: The peer library.
        name: The metafile's model name.
        config: The peer config, relative to the library's config root.
        url: The published file.
        collection: The metafile collection (the algorithm).
        metadata: The metafile's ``Metadata`` (training data, architecture, ...).
        results: The metafile's ``Results`` (a list of ``{Task, Dataset, Metrics}``).
        converted_from: The metafile's ``Converted From`` (weights and code of the original), if any.
    """

    library: str
    name: str
    config: str
    url: str
    collection: str = ''
    metadata: Dict[str, Any] = field(default_factory=dict)
    results: List[Dict[str, Any]] = field(default_factory=list)
    converted_from: Optional[Dict[str, str]] = None


@dataclass(frozen=True)
class MetafileFix:
    """A correction of a peer metafile entry, found by its weights' file-name hash."""

    library: str
    hash: str
    config: str
    why: str


_ADE160K = "mmseg 1.2.2's ocrnet metafile lists this 160k ADE20K file under the 80k config's name"
METAFILE_FIXES: Tuple[MetafileFix, ...] = (
    MetafileFix('mmseg', '8e913058', config='ocrnet/ocrnet_hr18s_4xb4-160k_ade20k-512x512.py', why=_ADE160K),
    MetafileFix('mmseg', 'd8fcd9d1', config='ocrnet/ocrnet_hr18_4xb4-160k_ade20k-512x512.py', why=_ADE160K),
)
# mmpose lists each PoseTrack18 file twice: evaluated with ground-truth person boxes, then with a detector's boxes
# (mmpose's PoseTrack18 README); the two result sets are kept apart by these suffixes.
POSETRACK_SUFFIXES = (' (ground-truth boxes)', ' (detected boxes)')
# Dataset names that some peer metafiles write as a stray markdown comment, by the config's dataset folder name.
DATASET_NAMES = {'cityscapes': 'Cityscapes', 'ade20k': 'ADE20K', 'voc12aug': 'Pascal VOC 2012 + Aug'}


def _metafiles(root: str) -> List[str]:
    return sorted(p for ext in ('yml', 'yaml') for p in glob.glob(osp.join(root, '**', f'*.{ext}'), recursive=True))


def _results(model: Dict[str, Any]) -> List[Dict[str, Any]]:
    results = model.get('Results') or []
    return copy.deepcopy([results] if isinstance(results, dict) else list(results))


def _fix_dataset(name: Optional[str], config: str) -> Optional[str]:
    if isinstance(name, str) and name.startswith('#'):  # a markdown comment that leaked into the metafile
        for token, dataset in DATASET_NAMES.items():
            if token in osp.basename(config):
                return dataset
    return name


def collections(library: str) -> Dict[str, Dict[str, Any]]:
    """``{collection name: its Paper}`` from the library's metafiles (the algorithm's paper)."""
    out: Dict[str, Dict[str, Any]] = {}
    for path in _metafiles(config_root(library)):
        with open(path) as f:
            meta = yaml.safe_load(f)
        for col in (meta.get('Collections') or []) if isinstance(meta, dict) else []:
            paper = col.get('Paper')
            if isinstance(col, dict) and col.get('Name') and isinstance(paper, dict) and paper.get('URL'):
                out.setdefault(col['Name'], {'Title': str(paper.get('Title', '')).strip(), 'URL': paper['URL']})
    return out


def published_weights(library: str) -> List[PeerWeights]:
    """Every checkpoint that the library's metafiles publish for one of its HRNet configs, corrected and
    deduplicated (one entry per file; a file listed twice keeps both result sets)."""
    from .weights import hash_prefix_from_url
    root = config_root(library)
    configs = set(hrnet_configs(library))
    fixes = {f.hash: f for f in METAFILE_FIXES if f.library == library}
    by_url: Dict[str, PeerWeights] = {}
    for path in _metafiles(root):
        with open(path) as f:
            meta = yaml.safe_load(f)
        if not isinstance(meta, dict):
            continue
        for model in meta.get('Models') or []:
            config = str(model.get('Config', '')).split('configs/', 1)[-1]
            url = model.get('Weights')
            url = url if isinstance(url, str) else None  # a few non-HRNet entries list several files
            fix = fixes.get(hash_prefix_from_url(url or '') or '')
            if fix is not None:
                config = fix.config
            if config not in configs or not url:
                continue
            results = _results(model)
            for r in results:
                r['Dataset'] = _fix_dataset(r.get('Dataset'), config)
            metadata = copy.deepcopy(dict(model.get('Metadata') or {}))
            if 'Training Data' in metadata:
                metadata['Training Data'] = _fix_dataset(metadata['Training Data'], config)
            name = osp.splitext(osp.basename(config))[0] if fix is not None else model['Name']
            if url in by_url:  # the same file listed again with another evaluation
                earlier = by_url[url]
                if 'posetrack18' in config:
                    for r, suffix in ((earlier.results, POSETRACK_SUFFIXES[0]), (results, POSETRACK_SUFFIXES[1])):
                        for item in r:
                            if not str(item['Dataset']).endswith(suffix):
                                item['Dataset'] = f'{item["Dataset"]}{suffix}'
                earlier.results.extend(results)
                continue
            by_url[url] = PeerWeights(library=library, name=name, config=config, url=url,
                                      collection=model.get('In Collection', ''), metadata=metadata,
                                      results=results, converted_from=copy.deepcopy(model.get('Converted From')))
    order = {url: i for i, url in enumerate(by_url)}  # a config's files in the peer's order: its own recipe first
    return sorted(by_url.values(), key=lambda w: (w.config, order[w.url]))
