"""Models by name: :func:`list_models` and :func:`get_model`, like timm's ``create_model`` and torchvision's
``get_model``/``list_models``, over hrnet_mm's weights table (``docs/model_zoo.md``).

A model is named by its weights-table entry (``'td-hm_hrnet-w32_8xb64-210e_coco-256x192'``,
``'imagenet/w18'``; a config name with or without its task folder or ``.py``) or given as a config file. The
model comes from its task library's own ``init`` function (mmdet ``init_detector``, mmseg ``init_model``, mmpose
``init_model``, mmpretrain ``init_model``), so it carries ``model.cfg`` (with the test pipeline) and
``model.dataset_meta`` as that library's inferencers expect, and the weights are checked to fill every parameter
and buffer (the libraries load non-strictly and only warn).
"""
from __future__ import annotations

import contextlib
import fnmatch
import importlib
import importlib.util
import os.path as osp
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Union

from ..models.checkpoint import CheckpointFileError
from ..zoo.weights import ZooEntry, get_entry, load_table

SCOPES = ('mmdet', 'mmseg', 'mmpose', 'mmpretrain')
TASKS = {'detection': 'mmdet', 'segmentation': 'mmseg', 'pose': 'mmpose', 'classification': 'mmpretrain'}


class ModelNotFoundError(KeyError):
    """No weights-table entry or config file by that name; the message names the closest entries."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    Attributes:
        name: What the user wrote.
        config: The config file.
        scope: Its task library (``default_scope``).
        weights: The local weights file, or ``None`` for random weights.
        entry: The weights-table entry, when the name is one.
    """

    name: str
    config: str
    scope: str
    weights: Optional[str]
    entry: Optional[ZooEntry]


def list_models(pattern: str = '*', task: Optional[str] = None) -> List[str]:
    """The names of the weights-table models that match ``pattern`` (shell wildcards, case-insensitive), sorted.
    The backbone entries (``imagenet/w32``: ImageNet weights of a backbone, for ``init_cfg``) are not models.

    Args:
        pattern: For example ``'*hrnet-w32*coco*'``; ``'*'`` lists all.
        task: ``'detection'``, ``'segmentation'``, ``'pose'`` or ``'classification'`` to list one task only.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f'unknown task {task!r}; one of {", ".join(TASKS)}')
    pattern = pattern.lower()
    return sorted(e.name for e in load_table() if e.kind == 'model' and (task is None or e.task == task)
                  and fnmatch.fnmatchcase(e.name.lower(), pattern))


def is_config_file(name: str) -> bool:
    """Whether ``name`` is meant as a config file (an existing file, or a ``.py`` path) rather than a model name."""
    return osp.isfile(name) or (name.endswith('.py') and ('/' in name or osp.sep in name))


def resolve(name_or_config: str, pretrained: Union[bool, str] = True) -> ModelSource:
    """The config, task library and local weights file of a model name or config file.

    Args:
        name_or_config: A weights-table name or a config file.
        pretrained: ``True``: the entry's published weights (downloaded once into torch's hub cache, sha256
            checked, ``HRNET_MM_MIRROR`` honoured; for a config file, the entry whose config has its name);
            ``False``: random weights; a path: that checkpoint file.

    Raises:
        ModelNotFoundError: No such entry or config file.
        CheckpointFileError: The weights cannot be had (offline and not cached; not a checkpoint; hash mismatch).
        ValueError: ``pretrained=True`` for a config without a weights-table entry; an unsupported task library.
    """
    from ..cli.errors import config_not_found
    from ..zoo.hub import cache_dir, fetch

    entry = None
    if is_config_file(name_or_config):
        if not osp.isfile(name_or_config):
            raise ModelNotFoundError(config_not_found(name_or_config))
        config = name_or_config
        if pretrained is True:
            try:
                entry = get_entry(osp.basename(config))
            except KeyError:
                raise ValueError(f'{config} has no entry in the weights table, so pretrained=True has no weights '
                                 'to load: pass a checkpoint path, or pretrained=False') from None
    else:
        try:
            entry = get_entry(name_or_config)
        except KeyError as exc:
            if name_or_config.endswith('.py'):
                raise ModelNotFoundError(config_not_found(name_or_config)) from None
            raise ModelNotFoundError(exc.args[0].replace('hrnet_mm weights', 'hrnet_mm model')) from None
        if entry.kind != 'model':
            raise ValueError(f'{entry.name} holds the ImageNet weights of an HRNet-{entry.arch} backbone, not a '
                             f"model: start a config from them with init_cfg=dict(type='Pretrained', "
                             f"checkpoint='hrnet_mm://{entry.name}')")
        config = entry.config_path
    weights = None
    if isinstance(pretrained, str):
        if not osp.isfile(pretrained):
            raise CheckpointFileError(f'checkpoint file not found: {pretrained}')
        weights = pretrained
    elif pretrained:
        try:
            weights = fetch(entry.url, entry.hash_prefix, entry.filename)
        except CheckpointFileError as exc:
            if 'download failed' not in str(exc):
                raise
            raise CheckpointFileError(f'{exc}; offline? put {entry.filename} into {cache_dir()}, or set '
                                      'HRNET_MM_MIRROR to a folder or URL prefix that holds it') from None
    return ModelSource(name_or_config, config, _scope(config), weights, entry)


def _scope(config: str) -> str:
    """The task library of a config (its ``default_scope``), checked installed, its modules registered."""
    from mmengine.config import Config

    scope = Config.fromfile(config).get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'{config}: default_scope {scope!r} is not one of {", ".join(SCOPES)}')
    if importlib.util.find_spec(scope) is None:
        raise ValueError(f'{config} needs the task library {scope}, which is not installed (pip install {scope})')
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    return scope


def read_weights(source: ModelSource) -> Optional[Dict[str, Any]]:
    """The state dict of ``source.weights`` (``None`` without weights), read before the model is built, so that a
    file that is no checkpoint is one clear :class:`~hrnet_mm.models.checkpoint.CheckpointFileError`."""
    from ..models.checkpoint import read_checkpoint
    return None if source.weights is None else read_checkpoint(source.weights)


def check_weights(model: Any, source: ModelSource, state: Optional[Dict[str, Any]]) -> None:
    """Raises :class:`~hrnet_mm.models.checkpoint.CheckpointMismatchError` unless ``state`` (read from
    ``source.weights``) fills every parameter and buffer of ``model`` (the task libraries' loaders only warn)."""
    if state is None:
        return
    from ..cli.checkpoint_checks import check_state_fits
    from ..cli.errors import UserInputError
    from ..models.checkpoint import CheckpointMismatchError

    try:
        check_state_fits(model, state, source.weights, source.config)
    except UserInputError as exc:
        raise CheckpointMismatchError(str(exc)) from None


@contextlib.contextmanager
def keep_default_scope() -> Iterator[None]:
    """Restores mmengine's current ``DefaultScope`` afterwards: the libraries' ``init`` functions and inferencers
    set it for the whole process, which would change how later configs without a scope are built."""
    from mmengine.registry import DefaultScope

    saved = DefaultScope._instance_dict.copy()
    try:
        yield
    finally:
        DefaultScope._instance_dict.clear()
        DefaultScope._instance_dict.update(saved)


def get_model(name_or_config: str, pretrained: Union[bool, str] = True, device: str = 'cpu') -> Any:
    """A ready model in eval mode: a weights-table entry or a config, built by its task library.

    Args:
        name_or_config: A name of :func:`list_models` or a config file.
        pretrained: ``True`` (the entry's weights), ``False`` (random) or a checkpoint path; see :func:`resolve`.
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ...

    Returns:
        The task library's model (an mmdet detector, mmseg segmentor, mmpose pose estimator or mmpretrain
        classifier) with ``model.cfg`` (the config, test pipeline included) and ``model.dataset_meta``.

    Raises:
        ModelNotFoundError, CheckpointFileError, CheckpointMismatchError, ValueError: see :func:`resolve`.
    """
    source = resolve(name_or_config, pretrained)
    state = read_weights(source)
    init = {'mmdet': ('mmdet.apis', 'init_detector'), 'mmseg': ('mmseg.apis', 'init_model'),
            'mmpose': ('mmpose.apis', 'init_model'), 'mmpretrain': ('mmpretrain.apis', 'init_model')}[source.scope]
    fn = getattr(importlib.import_module(init[0]), init[1])
    with keep_default_scope(), warnings.catch_warnings(record=True):  # recorded, not shown, whatever the filters
        warnings.simplefilter('ignore')  # the libraries warn about missing meta of random-weight models
        model = fn(source.config, source.weights, device=device)
    check_weights(model, source, state)
    if source.scope == 'mmpretrain':  # the names the other three libraries use
        model.cfg, model.dataset_meta = model._config, model._dataset_meta
    model.source = source
    return model.eval()
