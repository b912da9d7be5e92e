"""Shared helpers of ``tools/train.py`` and ``tools/test.py``: dataset checks, one-line user errors, quiet logs.

* :func:`check_datasets` looks at the datasets a run will read before the runner is built and reports a missing
  or malformed dataset as one :class:`UserInputError` naming the path, the config key and the fix.
* :func:`user_errors` turns user errors (and exceptions that are clearly caused by the input: missing files,
  broken JSON, unknown registry names) into one line ``<tool>: error: ...`` with exit status 2, or shows the
  traceback with ``debug``; other exceptions propagate unchanged.
* :func:`quiet_startup` keeps mmengine's multi-line startup records (environment, config dump, hook order) out of
  the console while the runner is built; they still go to the log file of the work dir.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import os
import os.path as osp
import shlex
import sys
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
COCO_KEYS = ('images', 'annotations', 'categories')
# Files above this size are not parsed (the dataset parses them anyway): only their top-level keys are looked for.
_JSON_PARSE_LIMIT = 64 * 2 ** 20


class UserInputError(Exception):
    """A problem with the user's input (data, config, checkpoint), reported as one line."""


# ----------------------------------------------------------------------------------------------- datasets


def _is_remote(path: str) -> bool:
    return '://' in path or path.startswith('s3:')


def _join(data_root: Optional[str], path: str) -> str:
    """``path`` joined with ``data_root`` as mmengine's ``BaseDataset`` does (absolute paths stay)."""
    if not data_root or osp.isabs(path) or _is_remote(path):
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
        if backend not in ('local', 'disk') or _is_remote(str(self.data_root)):
            return
        if self.data_root and not osp.isdir(self.data_root):
            self.fail('dataset folder not found', self.data_root, f'{self.key}.data_root')
        if self.ann_file and not _is_remote(str(self.ann_file)):
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
        if _is_remote(folder) or not folder:
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
            if not _is_remote(path) and not osp.isfile(path):
                raise UserInputError(f'annotation file not found: {path} ({key}); put it there or point '
                                     f'--cfg-options {key}=PATH at it')


# ------------------------------------------------------------------------------------------- configs


def shipped_configs() -> List[str]:
    """The configs hrnet_mm ships, as ``configs/<task>/<name>.py`` paths relative to the package's configs root."""
    root = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim', 'configs')
    found = []
    for dirpath, _, names in os.walk(root):
        found += [osp.relpath(osp.join(dirpath, n), root) for n in names if n.endswith('.py')]
    return sorted('configs/' + p.replace(os.sep, '/') for p in found if '_base_' not in p)


def config_not_found(path: str) -> str:
    """The error line for a config path that does not exist, with the closest shipped configs."""
    from ..zoo.weights import closest
    configs = shipped_configs()
    by_name = {osp.splitext(osp.basename(c))[0]: c for c in configs}
    stem = osp.splitext(osp.basename(path))[0]
    close = [by_name[n] for n in closest(stem, list(by_name))]
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    return f'config file not found: {path}{hint}'


def missing_base_message(error: str) -> Optional[str]:
    """For mmengine's error about a missing ``hrnet_mm::<task>/<name>.py`` base, the line that names it as written
    and the closest shipped configs; ``None`` for other errors."""
    import re
    match = re.search(r'hrnet_mm[/\\]\.mim[/\\]configs[/\\]([^"\']+)', error)
    if not match or 'does not exist' not in error:
        return None
    rel = match.group(1).replace('\\', '/')
    line = config_not_found(f'hrnet_mm::{rel}').replace('configs/', 'hrnet_mm::')
    return line.replace('config file not found', '_base_ not found', 1)


# ------------------------------------------------------------------------------------------- checkpoints


def replace_syncbn(obj: Any) -> Any:
    """A copy of a config (dict/list tree) with every ``type='SyncBN'`` replaced by ``'BN'``.

    SyncBN needs a process group in its forward; BN has the same parameters and buffers, so a model built this way
    loads the same checkpoints in a single process (analysis tools, tests).
    """
    if isinstance(obj, dict):
        return {k: ('BN' if k == 'type' and v == 'SyncBN' else replace_syncbn(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [replace_syncbn(v) for v in obj]
    return obj


def _read_state(checkpoint: str) -> Dict[str, Any]:
    """The state dict of a local checkpoint file (:func:`hrnet_mm.models.checkpoint.read_checkpoint`)."""
    from ..models.checkpoint import CheckpointFileError, read_checkpoint
    try:
        return read_checkpoint(checkpoint)
    except CheckpointFileError as exc:
        raise UserInputError(f'cannot read checkpoint {exc}; is it a .pth file saved by tools/train.py?') from exc


def _compare_state(model: Any, state: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any], List[str], List[str]]:
    """(checkpoint state, model state, names missing from the checkpoint, names with other shapes), without a DDP
    ``module.`` prefix on either side."""
    from ..models.checkpoint import compare_state, unwrap_state_dict
    state, model_state = unwrap_state_dict(state), unwrap_state_dict(model.state_dict())
    missing, mismatched, _ = compare_state(model_state, state)
    return state, model_state, missing, mismatched


def _shape_example(state: Dict[str, Any], model_state: Dict[str, Any], mismatched: List[str]) -> str:
    k = mismatched[0]
    return f'e.g. {k}: checkpoint {tuple(state[k].shape)}, model {tuple(model_state[k].shape)}'


def check_load_from(model: Any, checkpoint: str, config: str) -> Optional[str]:
    """What ``load_from`` will load into ``model``, before training starts.

    Fine-tuning from a checkpoint with another head is normal (mmengine loads what fits and keeps the rest as
    initialized), so partial fits are a one-line summary, not an error. A checkpoint of which no weight fits is an
    error (usually a bare backbone file, which belongs in the backbone's ``init_cfg``, or another model).

    Returns:
        None when every weight fits, else the summary line.

    Raises:
        UserInputError: The file is not a checkpoint, or none of the model's weights are in it with their shapes.
    """
    if _is_remote(checkpoint) or not osp.isfile(checkpoint):
        return None
    state, model_state, missing, mismatched = _compare_state(model, _read_state(checkpoint))
    fitting = [k for k in model_state if k in state and k not in mismatched]
    if not fitting:
        hint = ''
        if any(f'backbone.{k}' in model_state for k in state):
            hint = ("; it looks like a bare backbone: use model.backbone.init_cfg=dict(type='Pretrained', "
                    f"checkpoint='{checkpoint}') instead")
        raise UserInputError(f'load_from {checkpoint}: none of the weights of the model of {config} are in it with '
                             f'their shapes (model e.g. {next(iter(model_state), "?")}, checkpoint e.g. '
                             f'{next(iter(state), "?")}){hint}')
    if not missing and not mismatched:
        return None
    parts = [f'{len(fitting)} of {len(model_state)} weights load']
    if mismatched:
        parts.append(f'{len(mismatched)} with other shapes keep their initialization '
                     f'({_shape_example(state, model_state, mismatched)})')
    if missing:
        parts.append(f'{len(missing)} are not in the checkpoint (e.g. {missing[0]})')
    return f'load_from {checkpoint}: ' + '; '.join(parts)


def check_checkpoint_fits(model: Any, checkpoint: str, config: str) -> None:
    """Checks that ``checkpoint`` was saved from a model like ``model`` (same weight names and shapes).

    mmengine loads checkpoints non-strictly (warnings only), so testing the checkpoint of another config would
    evaluate a partly random model; this reports it as one error instead.

    Raises:
        UserInputError: The file is not a checkpoint, or weights of the model are missing or have other shapes.
    """
    if _is_remote(checkpoint) or not osp.isfile(checkpoint):
        return
    state = _read_state(checkpoint)
    check_state_fits(model, state, checkpoint, config)


def _scope_of(model: Any) -> Optional[str]:
    """The task library a built model comes from (its class's top-level package)."""
    name = type(model).__module__.split('.')[0]
    return name if name in ('mmdet', 'mmseg', 'mmpose', 'mmpretrain') else None


def check_state_fits(model: Any, state: Dict[str, Any], checkpoint: str, config: str) -> None:
    """Checks that the weights ``state`` (read from ``checkpoint``) fill every parameter and buffer of ``model``
    with the right shapes; ``module.`` prefixes (DDP) are ignored on both sides.

    Raises:
        UserInputError: Weights of the model are missing from ``state`` or have other shapes.
    """
    state, model_state, missing, mismatched = _compare_state(model, state)
    if missing or mismatched:
        from ..zoo.convert import detect_format
        detail = []
        family, scope = detect_format(state), _scope_of(model)
        if family and scope and family != scope and not (family == 'mmpretrain' and scope == 'mmpose'):
            detail.append(f'it holds a {family} model, the config builds a {scope} one')
        if mismatched:
            example = _shape_example(state, model_state, mismatched)
            detail.append(f'{len(mismatched)} weights with other shapes ({example})')
        if missing:
            detail.append(f'{len(missing)} of {len(model_state)} weights missing (e.g. {missing[0]})')
        raise UserInputError(f'checkpoint {checkpoint} does not fit the model of {config}: {"; ".join(detail)}; '
                             'was it trained with another config?')


# ------------------------------------------------------------------------------------------------ errors


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    return (text.splitlines() or [''])[0]


def user_error_message(exc: BaseException) -> Optional[str]:
    """One line for an exception that is clearly caused by the user's input, else ``None``.

    Recognised: :class:`UserInputError`, missing files (``FileNotFoundError``, ``IsADirectoryError``), broken
    JSON (``json.JSONDecodeError``) and names missing from a registry (mmengine's ``KeyError('X is not in the
    ... registry')``); the exception's cause chain is searched too.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserInputError):
            return str(exc)
        if isinstance(exc, (FileNotFoundError, IsADirectoryError)):
            name = exc.filename if getattr(exc, 'filename', None) else None
            what = 'file not found' if isinstance(exc, FileNotFoundError) else 'expected a file, found a folder'
            if name is not None:
                return f'{what}: {name}; check the paths in the config (data_root, ann_file, data_prefix, load_from)'
            return f'{type(exc).__name__}: {_first_line(exc)}'
        if isinstance(exc, json.JSONDecodeError):
            return f'invalid JSON file ({exc}); check the annotation files of the config'
        if isinstance(exc, KeyError) and 'is not in the' in _first_line(exc) and 'registry' in _first_line(exc):
            line = _first_line(exc).split('. Please check')[0]
            return f'{line}: check the type names in the config and its custom_imports'
        exc = exc.__cause__ or exc.__context__
    return None


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt or was raised while handling one (its cause/context chain)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class Interrupted(Exception):
    """Ctrl-C, with the one line that tells what to do next."""


class InterruptGuard:
    """Makes one Ctrl-C stop a training run even where the ``KeyboardInterrupt`` gets lost.

    Python raises a Ctrl-C wherever the main thread happens to be. When that is inside a finalizer (``__del__``, a
    weakref callback: the exception is printed as "Exception ignored" and dropped) or inside a library's
    ``except BaseException``, training simply goes on. While the guard is active, SIGINT also sets
    :attr:`requested`, and the hook that :meth:`hook` returns raises ``KeyboardInterrupt`` again at the next
    train or val iteration and epoch end. Use it as a context manager in the main thread; it restores the
    previous SIGINT handler on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _on_sigint(self, signum, frame) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raises ``KeyboardInterrupt`` if a Ctrl-C arrived while the guard was active."""
        if self.requested:
            raise KeyboardInterrupt

    def hook(self):
        """An mmengine hook (highest priority) that calls :meth:`check` before every train and val iteration and
        after every train and val epoch; register it with ``runner.register_hook(guard.hook(), 'HIGHEST')``."""
        from mmengine.hooks import Hook

        check = self.check

        class InterruptHook(Hook):
            priority = 'HIGHEST'

            def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
                check()

            def before_val_iter(self, runner, batch_idx, data_batch=None) -> None:
                check()

            def after_train_epoch(self, runner) -> None:
                check()

            def after_val_epoch(self, runner, metrics=None) -> None:
                check()

        return InterruptHook()

    def __enter__(self) -> 'InterruptGuard':
        import signal
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info) -> None:
        import signal
        signal.signal(signal.SIGINT, self._previous)


@contextlib.contextmanager
def user_errors(prog: str, debug: bool = False, user_types: Tuple[type, ...] = ()) -> Iterator[None]:
    """Reports user errors in the block as ``prog: error: <one line>`` on stderr and exits with status 2.

    Exceptions of ``user_types`` and those :func:`user_error_message` recognises are user errors; others
    propagate with their traceback. :class:`Interrupted` prints its line and exits with status 130.

    Args:
        prog: Tool name.
        debug: Also print the traceback of user errors (``--debug``).
        user_types: Further exception types whose text is the one line (e.g. the tool's ``ToolError``).
    """
    try:
        yield
    except Interrupted as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f'{prog}: {exc}\n')
        sys.exit(130)
    except Exception as exc:
        message = str(exc) if user_types and isinstance(exc, user_types) else user_error_message(exc)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        elif not isinstance(exc, user_types + (UserInputError, )):  # raised by a library: say where to look
            message += ' (--debug shows the traceback)'
        sys.stdout.flush()
        sys.stderr.write(f'{prog}: error: {message}\n')
        sys.exit(2)


def interrupted_message(work_dir: str, command: Sequence[str]) -> str:
    """The line printed when training is interrupted: where the last checkpoint is and how to resume."""
    last = osp.join(work_dir, 'last_checkpoint')
    resume = ' '.join(shlex.quote(part) for part in [*command, *([] if '--resume' in command else ['--resume'])])
    if osp.isfile(last):
        with open(last) as f:
            ckpt = f.read().strip()
        return f'interrupted; last checkpoint: {ckpt}; continue with: {resume}'
    return f'interrupted before the first checkpoint was saved (work dir: {work_dir}); rerun to start again'


# -------------------------------------------------------------------------------------------------- logs


def _short_path(path: str) -> str:
    """``path`` relative to the cwd when it is below it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith('..') else rel


class StartupFilter(logging.Filter):
    """Drops multi-line INFO records (environment, config dump, hook order) from a console handler while
    ``active``; the first dropped record is replaced by one line saying where the log file is."""

    max_lines = 3

    def __init__(self, handler: logging.Handler, log_file: Optional[str]) -> None:
        super().__init__()
        self.handler, self.log_file = handler, log_file
        self.active, self.dropped = True, 0

    # mmengine's own deprecation notices, raised by its checkpoint hook on every run: nothing a user can act on
    # (they stay in the log file)
    internal_notices = ('"FileClient" will be deprecated in future', '"HardDiskBackend" is the alias of')

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        if record.levelno == logging.WARNING and message.startswith(self.internal_notices):
            return False
        if not self.active or record.levelno > logging.INFO:
            return True
        if message.count('\n') < self.max_lines:
            return True
        if self.dropped == 0:
            where = f'written to {self.log_file}' if self.log_file else 'not shown'
            note = logging.LogRecord(record.name, logging.INFO, record.pathname, record.lineno,
                                     f'config, environment and hook order {where} (--verbose prints them here)',
                                     None, None)
            note.created, note.msecs = record.created, record.msecs
            self.handler.emit(note)
        self.dropped += 1
        return False


@contextlib.contextmanager
def quiet_startup(verbose: bool = False) -> Iterator[List[StartupFilter]]:
    """While the block runs (building the runner), console handlers of new ``MMLogger`` instances drop
    multi-line INFO records; the log file keeps everything. Does nothing when ``verbose``.

    Yields:
        The filters installed (inactive once the block ends).
    """
    filters: List[StartupFilter] = []
    if verbose:
        yield filters
        return
    from mmengine.logging import MMLogger

    original: Callable = MMLogger.__init__

    def __init__(self: Any, name: str, *args: Any, **kwargs: Any) -> None:
        original(self, name, *args, **kwargs)
        files = [h.baseFilename for h in self.handlers if isinstance(h, logging.FileHandler)]
        log_file = _short_path(files[0]) if files else None
        for handler in self.handlers:
            if type(handler) is logging.StreamHandler:  # the console, not a file handler
                filters.append(StartupFilter(handler, log_file))
                handler.addFilter(filters[-1])

    MMLogger.__init__ = __init__
    try:
        yield filters
    finally:
        MMLogger.__init__ = original
        for f in filters:
            f.active = False
