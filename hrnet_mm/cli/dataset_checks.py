"""The datasets and annotation files a run will read, checked before the runner is built: :func:`check_datasets`
reports a missing or malformed dataset as one :class:`~hrnet_mm.cli.errors.UserInputError` naming the path, the
config key and the fix."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import UserInputError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
COCO_KEYS = ('images', 'annotations', 'categories')
# Files above this size are not parsed (the dataset parses them anyway): only their top-level keys are looked for.
_JSON_PARSE_LIMIT = 64 * 2 ** 20


def is_remote(path: str) -> bool:
    return '://' in path or path.startswith('s3:')


def _join(data_root: Optional[str], path: str) -> str:
    """``path`` joined with ``data_root`` as mmengine's ``BaseDataset`` does (absolute paths stay)."""
    if not data_root or osp.isabs(path) or is_remote(path):
        return path
    return osp.join(data_root, path)


def _dataset_class(scope: str, type_: Any) -> Optional[type]:
    """The dataset class of ``type_`` in ``scope``'s registry, or ``None`` when it cannot be found."""
    if isinstance(type_, type):
        return type_
    if not isinstance(type_, str):
        return None
    try:
        registry = importlib.import_module(f'{scope}.registry').DATASETS
        return registry.get(type_)
    except Exception:  # unknown names are reported by the registry itself when the runner builds the dataset
        return None


def _subclass_of(cls: Optional[type], module: str, name: str) -> bool:
    if cls is None:
        return False
    try:
        base = getattr(importlib.import_module(module), name)
    except Exception:
        return False
    return issubclass(cls, base)


def _default(cls: Optional[type], name: str, fallback: Any) -> Any:
    """Default value of ``cls.__init__``'s argument ``name``."""
    if cls is None:
        return fallback
    try:
        param = inspect.signature(cls.__init__).parameters.get(name)
    except (TypeError, ValueError):
        return fallback
    if param is None or param.default is inspect.Parameter.empty:
        return fallback
    return param.default


def _coco_style(scope: str, cls: Optional[type]) -> bool:
    """Whether the dataset reads a COCO-format JSON annotation file (images, annotations, categories)."""
    if scope == 'mmdet':
        return _subclass_of(cls, 'mmdet.datasets', 'CocoDataset')
    if scope == 'mmpose' and _subclass_of(cls, 'mmpose.datasets.datasets.base', 'BaseCocoStyleDataset'):
        from mmpose.datasets.datasets.base import BaseCocoStyleDataset

        # datasets with their own loader (MPII, ...) read other JSON layouts
        return cls._load_annotations is BaseCocoStyleDataset._load_annotations
    return False


def _demo_kind(scope: str, cls: Optional[type], coco: bool, folder: bool) -> Optional[str]:
    """The ``python -m hrnet_mm.datasets`` kind that writes data in this dataset's format."""
    if coco:
        return {'mmdet': 'coco', 'mmpose': 'coco-keypoints'}.get(scope)
    if scope == 'mmseg' and _subclass_of(cls, 'mmseg.datasets', 'CityscapesDataset'):
        return 'cityscapes'
    if folder:
        return 'imagenet'
    return None


def _walk_find(folder: str, suffixes: Sequence[str], limit: int = 200000) -> bool:
    """Whether a file ending with one of ``suffixes`` (case-insensitive) is anywhere under ``folder``."""
    suffixes = tuple(s.lower() for s in suffixes)
    seen = 0
    for _, _, files in os.walk(folder, followlinks=True):
        for name in files:
            if name.lower().endswith(suffixes):
                return True
            seen += 1
            if seen > limit:
                return True  # too large to scan: let the dataset decide
    return False


def _read_json_keys(path: str) -> Tuple[Optional[List[str]], Optional[str]]:
    """(top-level keys or None when the file is not a JSON object, error text)."""
    if os.path.getsize(path) > _JSON_PARSE_LIMIT:
        with open(path, 'rb') as f:
            head = f.read(1024).lstrip()
            if not head.startswith(b'{'):
                return None, 'does not start with a JSON object'
            f.seek(0)
            found, tail = set(), b''
            while True:
                chunk = f.read(2 ** 24)
                if not chunk:
                    break
                text = tail + chunk
                found.update(k for k in COCO_KEYS if f'"{k}"'.encode() in text)
                tail = chunk[-32:]
        return sorted(found), None
    try:
        with open(path, 'rb') as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f'{type(exc).__name__}: {exc}'
    if not isinstance(data, dict):
        return None, f'top level is a JSON {type(data).__name__}, not an object'
    return list(data), None


class _DatasetCheck:
    """Checks of one dataset config; ``key`` is its config path, e.g. ``train_dataloader.dataset``."""

    def __init__(self, ds: Dict[str, Any], key: str, scope: str) -> None:
        self.ds, self.key, self.scope = ds, key, scope
        self.type = ds.get('type')
        self.cls = _dataset_class(scope, self.type)
        self.data_root = ds.get('data_root', _default(self.cls, 'data_root', '')) or ''
        self.ann_file = ds.get('ann_file', _default(self.cls, 'ann_file', '')) or ''
        if not isinstance(self.ann_file, str):
            self.ann_file = ''
        prefix = ds.get('data_prefix', _default(self.cls, 'data_prefix', None))
        if isinstance(prefix, str):  # mmpretrain accepts a string: the image folder
            prefix = dict(img_path=prefix)
        if not prefix and scope == 'mmpretrain' and ds.get('split'):
            prefix = dict(img_path=ds['split'])
        self.prefix = dict(prefix or {})
        self.coco = bool(self.ann_file) and str(self.ann_file).endswith('.json') and _coco_style(scope, self.cls)
        self.folder = scope == 'mmpretrain' and not self.ann_file and ds.get('with_label', True) is not False
        if self.folder and not self.prefix.get('img_path') and self.data_root:
            self.prefix['img_path'] = ''  # the class folders are in data_root itself
        self.kind = _demo_kind(scope, self.cls, self.coco, self.folder)

    def fix(self, what: str = 'put the dataset there') -> str:
        hint = f'fix: {what} or pass --cfg-options {self.key}.data_root=PATH'
        if self.kind is not None:
            out = (self.data_root or '<folder>').rstrip('/\\') or '.'
            hint += f'; for the synthetic demo data run: python -m hrnet_mm.datasets {self.kind} {out}'
        return hint

    def fail(self, problem: str, path: str, key: str, what: str = 'put the dataset there') -> None:
        raise UserInputError(f'{problem}: {path} ({key}); {self.fix(what)}')

    def run(self, test_mode: bool) -> None:
        backend = (self.ds.get('backend_args') or {}).get('backend', 'local')
        if backend not in ('local', 'disk') or is_remote(str(self.data_root)):
            return
        if self.data_root and not osp.isdir(self.data_root):
            self.fail('dataset folder not found', self.data_root, f'{self.key}.data_root')
        if self.ann_file and not is_remote(str(self.ann_file)):
            self._ann_file(test_mode)
        for name in ('img', 'img_path', 'seg_map_path'):
            if isinstance(self.prefix.get(name), str):
                self._prefix(name)

    def _ann_file(self, test_mode: bool) -> None:
        path = _join(self.data_root, self.ann_file)
        key = f'{self.key}.ann_file'
        if not osp.isfile(path):
            self.fail('annotation file not found', path, key)
        if not self.coco:
            return
        keys, error = _read_json_keys(path)
        what = 'rewrite it as a COCO-format file'
        if keys is None:
            self.fail(f'annotation file is not valid COCO JSON ({error})', path, key, what)
        required = [k for k in COCO_KEYS if test_mode is False or k != 'annotations']
        if self.scope == 'mmpose' and self.ds.get('bbox_file'):
            required = [k for k in required if k != 'annotations']
        missing = [k for k in required if k not in keys]
        if missing:
            names = ', '.join(repr(k) for k in missing)
            self.fail(f'annotation file has no {names} key{"s" if len(missing) > 1 else ""} (a COCO file has '
                      f'{", ".join(COCO_KEYS)})', path, key, what)

    def _prefix(self, name: str) -> None:
        prefix = self.prefix[name]
        folder = _join(self.data_root, prefix)
        key = f'{self.key}.data_prefix.{name}' if 'data_prefix' in self.ds else f'{self.key}.data_root'
        if is_remote(folder) or not folder:
            return
        if not osp.isdir(folder):
            self.fail('folder not found', folder, key)
        if not os.listdir(folder):
            self.fail('folder is empty', folder, key)
        if self.scope == 'mmseg' and not self.ann_file:
            suffix_arg = 'img_suffix' if name == 'img_path' else 'seg_map_suffix'
            suffix = self.ds.get(suffix_arg, _default(self.cls, suffix_arg, None))
            if isinstance(suffix, str) and not _walk_find(folder, [suffix]):
                self.fail(f'no files ending with {suffix!r} ({self.key}.{suffix_arg}) under the folder', folder, key)
        if self.folder and name == 'img_path':
            self._class_folders(folder, key)

    def _class_folders(self, folder: str, key: str) -> None:
        extensions = self.ds.get('extensions', IMAGE_EXTENSIONS)
        classes = [d for d in sorted(os.listdir(folder)) if osp.isdir(osp.join(folder, d))]
        if not classes:
            self.fail('no class subfolders in the image folder (expected <folder>/<class name>/<image>)', folder, key)
        if not any(_walk_find(osp.join(folder, c), extensions) for c in classes):
            self.fail(f'no images ({", ".join(extensions)}) in the class subfolders of', folder, key)


def _leaf_datasets(ds: Any, key: str) -> Iterator[Tuple[Dict[str, Any], str]]:
    """The datasets inside wrappers (``dataset`` of RepeatDataset/ClassBalancedDataset/MultiImageMixDataset,
    ``datasets`` of ConcatDataset/CombinedDataset) with their config keys."""
    if not isinstance(ds, dict):
        return
    if isinstance(ds.get('dataset'), dict):
        yield from _leaf_datasets(ds['dataset'], f'{key}.dataset')
    elif isinstance(ds.get('datasets'), (list, tuple)):
        for i, sub in enumerate(ds['datasets']):
            yield from _leaf_datasets(sub, f'{key}.datasets.{i}')
    else:
        yield ds, key


def _evaluator_ann_files(evaluator: Any, key: str) -> Iterator[Tuple[str, str]]:
    if isinstance(evaluator, dict) and 'metrics' in evaluator:
        evaluator, key = evaluator['metrics'], f'{key}.metrics'
    items = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    for i, metric in enumerate(items):
        if isinstance(metric, dict) and isinstance(metric.get('ann_file'), str) and metric['ann_file']:
            yield metric['ann_file'], f'{key}.ann_file' if len(items) == 1 else f'{key}.{i}.ann_file'


def check_datasets(cfg: Any, loaders: Sequence[str], scope: str) -> None:
    """Checks the on-disk datasets of the dataloaders ``loaders`` of ``cfg`` (and their evaluators' files).

    Per dataset (inside ConcatDataset, RepeatDataset, ClassBalancedDataset and similar wrappers): ``data_root``
    exists; ``ann_file`` (joined with ``data_root`` as the libraries do) exists, and for COCO-style datasets is a
    JSON object with ``images``, ``categories`` and, unless in test mode, ``annotations``; the image and label
    folders of ``data_prefix`` exist and are not empty; for mmseg datasets without ``ann_file`` the folders hold
    files with ``img_suffix``/``seg_map_suffix``; for mmpretrain folder datasets (no ``ann_file``) the image folder
    has class subfolders with images. Remote paths (``s3://``, non-local ``backend_args``) are not checked.

    Args:
        cfg: The merged config.
        loaders: Dataloader fields to check, e.g. ``['train_dataloader', 'val_dataloader']``; unset ones are
            skipped.
        scope: Task library (``default_scope``).

    Raises:
        UserInputError: The first problem found, as one line with its path, config key and fix.
    """
    for field in loaders:
        loader = cfg.get(field, None)
        if not isinstance(loader, dict) or not isinstance(loader.get('dataset'), dict):
            continue
        for ds, key in _leaf_datasets(loader['dataset'], f'{field}.dataset'):
            test_mode = ds.get('test_mode', field != 'train_dataloader')
            try:
                _DatasetCheck(ds, key, scope).run(bool(test_mode))
            except UserInputError:
                raise
            except Exception:  # a dataset config these checks don't understand: the library will judge it
                continue
        evaluator_field = {'val_dataloader': 'val_evaluator', 'test_dataloader': 'test_evaluator'}.get(field)
        for path, key in _evaluator_ann_files(cfg.get(evaluator_field, None) if evaluator_field else None,
                                              str(evaluator_field)):
            if not is_remote(path) and not osp.isfile(path):
                raise UserInputError(f'annotation file not found: {path} ({key}); put it there or point '
                                     f'--cfg-options {key}=PATH at it')
