"""Test (evaluate) a checkpoint of any hrnet_mm config (detection, segmentation, pose or classification).

The task library is picked from the config's ``default_scope`` (``mmdet``, ``mmseg``, ``mmpose`` or
``mmpretrain``); the config is prepared exactly as that library's own ``tools/test.py`` does (visualization,
test-time augmentation, result dumps) and run by mmengine's ``Runner`` (or ``RUNNERS.build(cfg)`` when the
config sets ``runner_type``). ``hrnet_mm`` is imported first, so its runtime fixes apply. Works from any
working directory; relative paths in the config are relative to the current working directory.

``--out`` means what it means in the task library: mmdet/mmpretrain dump the predictions to a pickle file
(mmpretrain: the metrics with ``--out-item metrics``), mmseg writes prediction images to that directory,
mmpose writes the metrics (``--dump`` dumps its predictions).

Examples::

    python tools/test.py configs/demo/faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py work_dirs/demo/epoch_2.pth
    python tools/test.py CONFIG CHECKPOINT --out results.pkl --show-dir vis --work-dir work_dirs/eval
    python tools/test.py CONFIG CHECKPOINT --tta                     # mmdet, mmseg, mmpretrain
    python tools/test.py CONFIG CHECKPOINT --verbose --debug         # config dump on the console, tracebacks

Input errors (test data missing or malformed, a checkpoint of another config) are one line ``test.py: error:
...`` with exit status 2, as in ``tools/train.py``; the console is as quiet as there (``--verbose``).
    bash tools/dist_test.sh CONFIG CHECKPOINT 2 --out results.pkl    # 2 processes (CPU-only machines too)
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import os.path as osp
import sys
import warnings
from copy import deepcopy
from types import ModuleType
from typing import Any, List, Optional


def _train_tool() -> ModuleType:
    """Loads the shared helpers of ``tools/train.py`` (by path, so the cwd and ``sys.path`` don't matter)."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), 'train.py')
    spec = importlib.util.spec_from_file_location('_hrnet_mm_tools_train', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _train_tool()
ToolError = tool.ToolError


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command line of ``tools/test.py`` (the union of the task libraries' test flags)."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description='Test (and evaluate) a checkpoint of an hrnet_mm config with its '
                                     'task library (mmdet, mmseg, mmpose, mmpretrain, picked by default_scope)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', help='mmdet/mmpretrain: pickle file of the predictions (mmpretrain '
                        '--out-item metrics: of the metrics); mmseg: directory of prediction images; mmpose: '
                        'file of the metrics')
    parser.add_argument('--out-item', choices=['metrics', 'pred'], help='what --out holds (mmpretrain)')
    parser.add_argument('--dump', help='pickle file of the predictions (mmpose)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory where painted images are saved (under work_dir/timestamp)')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--interval', type=int, default=1, help='visualize every N samples (mmpose, mmpretrain)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, xxx=yyy pairs merged into it; no white space '
                        'inside a value')
    parser.add_argument('--amp', action='store_true', help='mixed-precision test (mmpretrain)')
    parser.add_argument('--no-pin-memory', action='store_true', help='disable pin_memory (mmpretrain)')
    parser.add_argument('--deploy', choices=['fp32', 'bf16', 'int8'],
                        help='test the deploy model (hrnet_mm.deploy.to_deploy) in this precision instead of the '
                        'checkpoint as trained; bf16 needs AVX512_BF16 or AMX, int8 calibrates on training images')
    parser.add_argument('--calibration-images', type=int, default=32,
                        help='--deploy int8: how many training images set the activation ranges (default 32)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (mmdet, mmseg, mmpretrain)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    tool.add_output_flags(parser)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _unsupported(args: argparse.Namespace, scope: str, flags: List[str]) -> None:
    for flag in flags:
        value = getattr(args, flag.lstrip('-').replace('-', '_'))
        if value not in (None, False):
            raise ToolError(f"{flag} is not supported by {scope}'s test tool")


def _mmdet(cfg: Any, args: argparse.Namespace) -> Any:
    from mmengine.config import ConfigDict

    if args.show or args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook

        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        if 'tta_model' not in cfg:
            warnings.warn('Cannot find ``tta_model`` in config, we will set it as default.')
            cfg.tta_model = dict(type='DetTTAModel',
                                 tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        if 'tta_pipeline' not in cfg:
            warnings.warn('Cannot find ``tta_pipeline`` in config, we will set it as default.')
            test_data_cfg = cfg.test_dataloader.dataset
            while 'dataset' in test_data_cfg:
                test_data_cfg = test_data_cfg['dataset']
            cfg.tta_pipeline = deepcopy(test_data_cfg.pipeline)
            cfg.tta_pipeline[-1] = dict(type='TestTimeAug', transforms=[
                [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                                       'scale_factor', 'flip', 'flip_direction'))]])
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ToolError(f'--out must be a .pkl or .pickle file, got {args.out}')
    return cfg


def _mmseg(cfg: Any, args: argparse.Namespace) -> Any:
    if args.show or args.show_dir:
        if 'visualization' not in cfg.default_hooks:
            raise ToolError("--show/--show-dir need visualization=dict(type='SegVisualizationHook') in "
                            'default_hooks')
        hook = cfg.default_hooks['visualization']
        hook['draw'] = True
        if args.show:
            hook['show'] = True
            hook['wait_time'] = args.wait_time
        if args.show_dir:
            cfg.visualizer['save_dir'] = args.show_dir
    if args.tta:
        if 'tta_pipeline' not in cfg or 'tta_model' not in cfg:
            raise ToolError('--tta needs tta_model and tta_pipeline in an mmseg config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    return cfg


def _mmpose(cfg: Any, args: argparse.Namespace) -> Any:
    if args.show or args.show_dir is not None:
        if 'visualization' not in cfg.default_hooks:
            raise ToolError("--show/--show-dir need visualization=dict(type='PoseVisualizationHook') in "
                            'default_hooks')
        vis = cfg.default_hooks.visualization
        vis.enable = True
        vis.show = args.show
        if args.show:
            vis.wait_time = args.wait_time
        vis.out_dir = args.show_dir
        vis.interval = args.interval
    if args.dump is not None:
        if not args.dump.endswith(('.pkl', '.pickle')):
            raise ToolError(f'--dump must be a .pkl or .pickle file, got {args.dump}')
        dump_metric = dict(type='DumpResults', out_file_path=args.dump)
        if isinstance(cfg.test_evaluator, (list, tuple)):
            cfg.test_evaluator = [*cfg.test_evaluator, dump_metric]
        else:
            cfg.test_evaluator = [cfg.test_evaluator, dump_metric]
    return cfg


def _mmpretrain(cfg: Any, args: argparse.Namespace) -> Any:
    from mmengine.config import ConfigDict

    if args.amp:
        cfg.test_cfg.fp16 = True
    if args.show or args.show_dir is not None:
        if 'visualization' not in cfg.default_hooks:
            raise ToolError("--show/--show-dir need visualization=dict(type='VisualizationHook') in default_hooks")
        vis = cfg.default_hooks.visualization
        vis.enable = True
        vis.show = args.show
        vis.wait_time = args.wait_time
        vis.out_dir = args.show_dir
        vis.interval = args.interval
    if args.tta:
        if 'tta_model' not in cfg:
            cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
        if 'tta_pipeline' not in cfg:
            test_pipeline = cfg.test_dataloader.dataset.pipeline
            cfg.tta_pipeline = deepcopy(test_pipeline)
            cfg.tta_pipeline[-1] = dict(type='TestTimeAug', transforms=[
                [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)], [test_pipeline[-1]]])
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    tool._pretrain_dataloaders(cfg, args, ['test_dataloader'], persistent=False)
    if args.out is None and args.out_item is not None:
        raise ToolError('--out-item needs --out')
    return cfg


def merge_test_args(cfg: Any, args: argparse.Namespace, scope: str) -> Any:
    """Applies the command line to ``cfg`` as ``scope``'s own ``tools/test.py`` does.

    Args:
        cfg: The config as read from the file.
        args: Parsed command line.
        scope: Task library.

    Returns:
        The updated config.
    """
    unsupported = dict(mmdet=['--out-item', '--dump', '--amp', '--no-pin-memory'],
                       mmseg=['--out-item', '--dump', '--amp', '--no-pin-memory'],
                       mmpose=['--tta', '--out-item', '--amp', '--no-pin-memory'], mmpretrain=['--dump'])
    _unsupported(args, scope, unsupported[scope])
    options_first = scope in ('mmdet', 'mmseg')
    if options_first and args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    tool.set_work_dir(cfg, args)
    cfg.load_from = args.checkpoint
    cfg = dict(mmdet=_mmdet, mmseg=_mmseg, mmpose=_mmpose, mmpretrain=_mmpretrain)[scope](cfg, args)
    if not options_first and args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def add_result_dumps(runner: Any, args: argparse.Namespace, scope: str) -> None:
    """Adds the ``--out`` dumps that the task libraries attach to the built runner."""
    if args.out is None:
        return
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults

        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    elif scope == 'mmpretrain' and args.out_item in ('pred', None):
        from mmengine.evaluator import DumpResults

        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    elif scope == 'mmpose':
        import mmengine
        from mmengine.hooks import Hook

        class SaveMetricHook(Hook):
            def after_test_epoch(self, _: Any, metrics: Optional[dict] = None) -> None:
                if metrics is not None:
                    mmengine.dump(metrics, args.out)

        runner.register_hook(SaveMetricHook(), 'LOWEST')


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``tools/test.py``.

    Args:
        argv: Command line without the program name (default ``sys.argv[1:]``).
    """
    args = parse_args(argv)
    tool.import_hrnet_mm()
    from hrnet_mm.cli import checkpoint_checks, console, dataset_checks, errors
    from hrnet_mm.deploy.precision import PrecisionError

    with errors.user_errors('test.py', args.debug, (ToolError, PrecisionError)):
        cfg, scope = tool.load_config(args.config, args.cfg_options)
        if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
            raise ToolError(f'checkpoint not found: {args.checkpoint}')
        if scope == 'mmdet':
            from mmdet.utils import setup_cache_size_limit_of_dynamo

            setup_cache_size_limit_of_dynamo()
        cfg = merge_test_args(cfg, args, scope)
        dataset_checks.check_datasets(cfg, ['test_dataloader'], scope)
        with console.quiet_startup(args.verbose):
            runner = tool.build_runner(cfg, scope)
        checkpoint_checks.check_checkpoint_fits(runner.model, args.checkpoint, args.config)
        first = next(runner.model.parameters(), None)
        if first is None or first.device.type == 'cpu':  # freed pages reused from batch to batch
            from hrnet_mm.deploy import tune_cpu_allocator
            tune_cpu_allocator()
        if args.deploy:
            from hrnet_mm.deploy.hook import DeployHook
            runner.register_hook(DeployHook(args.deploy, args.calibration_images), 'VERY_HIGH')
        add_result_dumps(runner, args, scope)
        try:
            metrics = runner.test()
        except KeyboardInterrupt:
            raise errors.Interrupted('interrupted') from None
    if scope == 'mmpretrain' and args.out and args.out_item == 'metrics':
        import mmengine

        mmengine.dump(metrics, args.out)


if __name__ == '__main__':
    sys.exit(main())
