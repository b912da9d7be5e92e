"""Train any hrnet_mm config (detection, segmentation, pose or classification) with one command.

The task library is picked from the config's ``default_scope`` (``mmdet``, ``mmseg``, ``mmpose`` or
``mmpretrain``); the config is then prepared exactly as that library's own ``tools/train.py`` does and run by
mmengine's ``Runner`` (or by ``RUNNERS.build(cfg)`` when the config sets ``runner_type``). ``hrnet_mm`` is
imported first, so its runtime fixes (:mod:`hrnet_mm.runtime.compat`) apply. Works from any working directory;
relative paths in the config (``data_root``) are relative to the current working directory.

Before the runner is built, the datasets the run reads are checked (:func:`hrnet_mm.cli.dataset_checks.check_datasets`):
a missing or malformed dataset, and any input error the libraries raise while building (missing file, broken
JSON, unknown type name), is one line ``train.py: error: ...`` with exit status 2 (``--debug`` adds the
traceback). The console shows one line per logging step; mmengine's environment, config dump and hook order go
to the log file of the work dir only (``--verbose`` prints them too). Ctrl-C prints where the last checkpoint is
and how to resume.

Examples::

    # single process (CPU or one GPU)
    python tools/train.py configs/demo/faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py --work-dir work_dirs/demo
    # shorter schedule, resume from the latest checkpoint of the work dir, or from a given one
    python tools/train.py CONFIG --cfg-options train_cfg.max_epochs=1 --resume
    python tools/train.py CONFIG --resume work_dirs/demo/epoch_1.pth
    # mixed precision and learning rate scaled to the actual total batch size
    python tools/train.py CONFIG --amp --auto-scale-lr
    # the full environment and config dump on the console too (always in the log file), tracebacks of user errors
    python tools/train.py CONFIG --verbose --debug
    # distributed: 2 processes on this machine (also on CPU-only machines, gloo), or under slurm
    bash tools/dist_train.sh CONFIG 2 --work-dir work_dirs/demo
    bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import os.path as osp
import sys
from copy import deepcopy
from typing import Any, Dict, List, NoReturn, Optional, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SUPPORTED_SCOPES = ('mmdet', 'mmseg', 'mmpose', 'mmpretrain')


class ToolError(Exception):
    """A user error reported as one line on stderr with a non-zero exit status (no traceback)."""


def fail(prog: str, message: str) -> NoReturn:
    """Prints ``prog: error: message`` on stderr and exits with status 2.

    Args:
        prog: Name of the tool.
        message: One-line description of the problem.
    """
    sys.stderr.write(f'{prog}: error: {message}\n')
    sys.exit(2)


def import_hrnet_mm() -> None:
    """Imports hrnet_mm (applying its compat fixes), from the checkout when it is not installed."""
    try:
        import hrnet_mm  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != 'hrnet_mm':
            raise
        sys.path.insert(0, ROOT)
        import hrnet_mm  # noqa: F401


def load_config(path: str, cfg_options: Optional[Dict[str, Any]] = None) -> Tuple[Any, str]:
    """Reads a config with mmengine and checks its ``default_scope`` (``--cfg-options`` are not merged yet).

    Args:
        path: Config file.
        cfg_options: ``--cfg-options``; a ``default_scope`` given there takes precedence.

    Returns:
        The :class:`mmengine.config.Config` and its task library (its ``default_scope``).

    Raises:
        ToolError: The file does not exist or cannot be parsed, or its scope is unsupported or not installed.
    """
    from mmengine.config import Config

    if not osp.isfile(path):
        from hrnet_mm.cli.errors import config_not_found
        raise ToolError(config_not_found(path))
    try:
        cfg = Config.fromfile(path)
    except Exception as exc:  # syntax errors, missing _base_ files, unknown `pkg::` bases
        from hrnet_mm.cli.errors import missing_base_message
        first_line = (str(exc).strip().splitlines() or [''])[0]
        hint = missing_base_message(first_line)
        raise ToolError(f'cannot read config {path}: {hint or f"{type(exc).__name__}: {first_line}"}') from exc
    scope = (cfg_options or {}).get('default_scope', cfg.get('default_scope'))
    return cfg, task_library(scope, path)


def task_library(scope: Optional[str], config: str = 'the config') -> str:
    """Checks that ``scope`` names a supported, installed task library and registers its modules.

    Args:
        scope: The config's ``default_scope``.
        config: Config path, for the error message.

    Returns:
        ``scope``.

    Raises:
        ToolError: ``scope`` is missing or unsupported, or the library is not installed.
    """
    supported = ', '.join(SUPPORTED_SCOPES)
    if scope is None:
        raise ToolError(f'{config} sets no default_scope; supported scopes: {supported}')
    if scope not in SUPPORTED_SCOPES:
        raise ToolError(f"unsupported default_scope {scope!r} in {config}; supported scopes: {supported}")
    if importlib.util.find_spec(scope) is None:
        raise ToolError(f"default_scope {scope!r} of {config} needs the package {scope}, which is not installed "
                        f"(supported scopes: {supported})")
    importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    return scope


def set_work_dir(cfg: Any, args: argparse.Namespace) -> None:
    """``work_dir`` priority: CLI > config > ``./work_dirs/<config name>`` (all task libraries)."""
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])


def build_runner(cfg: Any, scope: str) -> Any:
    """Builds mmengine's ``Runner`` from ``cfg``, or the runner named by ``cfg.runner_type`` from ``scope``'s
    ``RUNNERS`` registry (which falls back to mmengine's)."""
    from mmengine.runner import Runner

    if 'runner_type' in cfg:
        return importlib.import_module(f'{scope}.registry').RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` and ``--debug`` (train.py and test.py)."""
    parser.add_argument('--verbose', action='store_true',
                        help='also print the environment, the config and the hook order on the console (they are '
                        'always in the log file of the work dir)')
    parser.add_argument('--debug', action='store_true',
                        help='show the full traceback of input errors (missing or malformed data, config, '
                        'checkpoint) instead of one line')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command line of ``tools/train.py`` (the union of the task libraries' train flags)."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description='Train an hrnet_mm config with its task library (mmdet, mmseg, '
                                     'mmpose, mmpretrain, picked by default_scope)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or without a path from the latest checkpoint in '
                        'the work directory')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the actual total batch size / auto_scale_lr.base_batch_size')
    parser.add_argument('--no-validate', action='store_true',
                        help='do not evaluate during training (mmpose, mmpretrain)')
    parser.add_argument('--no-pin-memory', action='store_true',
                        help='disable pin_memory in the dataloaders (mmpretrain)')
    parser.add_argument('--no-persistent-workers', action='store_true',
                        help='disable persistent_workers in the dataloaders (mmpretrain)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, xxx=yyy pairs merged into it, e.g. '
                        'train_cfg.max_epochs=1 key="[a,b]"; no white space inside a value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    add_output_flags(parser)
    # torch.distributed.launch passes `--local-rank` (torch >= 2.0) or `--local_rank`; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _resume(cfg: Any, args: argparse.Namespace) -> None:
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume


def _auto_scale_lr(cfg: Any) -> None:
    if 'auto_scale_lr' in cfg and 'base_batch_size' in cfg.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    else:
        raise ToolError('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) in the config')


def _no_validate(cfg: Any) -> None:
    cfg.val_cfg = None
    cfg.val_dataloader = None
    cfg.val_evaluator = None


def _amp(cfg: Any, scope: str) -> None:
    optim_wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if scope in ('mmseg', 'mmpose') and optim_wrapper not in ('OptimWrapper', 'AmpOptimWrapper'):
        raise ToolError(f'--amp is only supported with OptimWrapper, but the config uses {optim_wrapper}')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    if scope == 'mmdet':
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def _pretrain_dataloaders(cfg: Any, args: argparse.Namespace, fields: List[str], persistent: bool) -> None:
    """mmpretrain's dataloader defaults (pin_memory, persistent_workers, default_collate) under the config's."""
    import torch
    from mmengine.config import ConfigDict

    # mmpretrain's tool pins memory unconditionally; without a GPU that only makes torch warn on every loader
    default = ConfigDict(pin_memory=torch.cuda.is_available(), collate_fn=dict(type='default_collate'))
    if persistent:
        default.persistent_workers = True
    for field in fields:
        if cfg.get(field, None) is None:
            continue
        loader = deepcopy(default)
        loader.update(cfg[field])
        if args.no_pin_memory:
            loader.pin_memory = False
        if getattr(args, 'no_persistent_workers', False):
            loader.persistent_workers = False
        if loader.get('persistent_workers') and loader.get('num_workers', 0) == 0:
            loader.persistent_workers = False  # torch's DataLoader refuses persistent workers without workers
        cfg[field] = loader


def merge_train_args(cfg: Any, args: argparse.Namespace, scope: str) -> Any:
    """Applies the command line to ``cfg`` in the order of ``scope``'s own ``tools/train.py``.

    mmdet and mmseg merge ``--cfg-options`` first, mmpose and mmpretrain last (so there they override the
    flags).

    Args:
        cfg: The config as read from the file.
        args: Parsed command line.
        scope: Task library.

    Returns:
        The updated config.
    """
    options_first = scope in ('mmdet', 'mmseg')
    if options_first and args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.no_validate:
        _no_validate(cfg)
    cfg.launcher = args.launcher
    set_work_dir(cfg, args)
    if args.amp:
        _amp(cfg, scope)
    if args.auto_scale_lr:
        _auto_scale_lr(cfg)
    _resume(cfg, args)
    if scope == 'mmpretrain':
        _pretrain_dataloaders(cfg, args, ['train_dataloader', 'val_dataloader', 'test_dataloader'], True)
    if not options_first and args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if scope == 'mmpose' and 'preprocess_cfg' in cfg:
        cfg.model.setdefault('data_preprocessor', cfg.get('preprocess_cfg', {}))
    return cfg


def train_loaders(cfg: Any) -> List[str]:
    """The dataloaders a training run reads: train, and val when validation is configured."""
    loaders = ['train_dataloader']
    if all(cfg.get(k, None) is not None for k in ('val_dataloader', 'val_cfg', 'val_evaluator')):
        loaders.append('val_dataloader')
    return loaders


def command_line(argv: Optional[List[str]]) -> List[str]:
    """The command that ran this tool (for the resume hint)."""
    args = sys.argv[1:] if argv is None else argv
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith('train.py') else 'tools/train.py'
    return ['python', script, *args]


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``tools/train.py``.

    Args:
        argv: Command line without the program name (default ``sys.argv[1:]``).
    """
    args = parse_args(argv)
    import_hrnet_mm()
    from hrnet_mm.cli import checkpoint_checks, console, dataset_checks, errors

    with errors.user_errors('train.py', args.debug, (ToolError, )):
        cfg, scope = load_config(args.config, args.cfg_options)
        if scope == 'mmdet':
            from mmdet.utils import setup_cache_size_limit_of_dynamo

            setup_cache_size_limit_of_dynamo()  # fewer recompilations, as mmdet's tool
        cfg = merge_train_args(cfg, args, scope)
        load_from = cfg.get('load_from', None)
        if isinstance(load_from, str) and '://' not in load_from and not osp.isfile(load_from):
            where = '--resume' if args.resume not in (None, 'auto') else 'load_from in the config'
            raise ToolError(f'checkpoint not found: {load_from} ({where})')
        dataset_checks.check_datasets(cfg, train_loaders(cfg), scope)
        with console.quiet_startup(args.verbose):
            runner = build_runner(cfg, scope)
        if isinstance(load_from, str) and not cfg.get('resume', False):
            summary = checkpoint_checks.check_load_from(runner.model, load_from, args.config)
            if summary:
                runner.logger.warning(summary)
        guard = errors.InterruptGuard()  # a Ctrl-C that a library swallows still stops the run
        runner.register_hook(guard.hook(), 'HIGHEST')
        try:
            with guard:
                runner.train()
        except (KeyboardInterrupt, Exception) as exc:
            # mmengine turns a Ctrl-C inside some of its steps into another error (e.g. a SyntaxError while it
            # formats the config for a checkpoint); the chain of exceptions still holds the KeyboardInterrupt
            if not (guard.requested or errors.caused_by_interrupt(exc)):
                raise
            raise errors.Interrupted(errors.interrupted_message(cfg.work_dir, command_line(argv))) from None


if __name__ == '__main__':
    main()
