"""Testing a model as it will be deployed: :class:`DeployHook` puts :func:`hrnet_mm.deploy.to_deploy`'s model (in
float32, bfloat16 or int8) in the runner before the test loop, so that the task library's own evaluator scores
exactly that model. ``tools/test.py --deploy PRECISION`` adds it; a config can too::

    custom_hooks = [dict(type='hrnet_mm.DeployHook', precision='int8', calibration_images=32)]
"""
from __future__ import annotations

import copy
from typing import Any, Callable, List, Optional, Tuple

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from hrnet_mm.registry import HOOKS

from .fold import to_deploy
from .precision import PrecisionError, canonical_precision, check_precision


@HOOKS.register_module()
class DeployHook(Hook):
    """Replaces ``runner.model`` by its deploy model at ``before_test`` (after the checkpoint is loaded). A model in
    a distributed wrapper (``tools/dist_test.sh``) is unwrapped first: each process tests its own deploy model on its
    share of the test set (inference synchronises no gradients), and the evaluator gathers the results as before.

    Args:
        precision: ``'fp32'``, ``'bf16'`` or ``'int8'`` (see :func:`hrnet_mm.deploy.to_deploy`).
        calibration_images: For ``'int8'``: how many images of the training set (``train_dataloader``, its
            pipeline included) calibrate the activation ranges; the batches are preprocessed by the model's data
            preprocessor and run in ``mode='tensor'``.
    """

    priority = 'VERY_HIGH'  # before the hooks that read the model at before_test

    def __init__(self, precision: str = 'fp32', calibration_images: int = 32) -> None:
        if calibration_images < 1:
            raise PrecisionError(f'calibration_images must be at least 1, got {calibration_images}')
        self.precision = precision
        self.calibration_images = calibration_images

    def before_test(self, runner: Any) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        name = canonical_precision(self.precision)
        # refused before any data is read (bf16 without native bfloat16, ...)
        check_precision(name, [] if name == 'int8' else None, {p.device for p in model.parameters()})
        calibration = self._calibration(runner, model) if name == 'int8' else None
        runner.model = to_deploy(model, precision=name, calibration=calibration)
        how = f'calibrated on {self._seen} training images' if calibration else 'BN folded, fused'
        runner.logger.info(f'testing the deploy model in {name} ({how})')

    def _calibration(self, runner: Any, model: Any) -> list:
        """The first ``calibration_images`` images of the training set, preprocessed as ``model`` reads them."""
        batches, self._seen = training_batches(runner.cfg, model, self.calibration_images, runner.build_dataloader)
        return [dict(inputs=data['inputs'], data_samples=data['data_samples'], mode='tensor') for data in batches]


def training_batches(cfg: Any, model: Any, count: int,
                     build_dataloader: Optional[Callable[..., Any]] = None) -> Tuple[List[dict], int]:
    """The first batches of the config's training set that hold at least ``count`` images, through its pipeline
    and preprocessed by ``model.data_preprocessor`` (``dict(inputs=(N, C, H, W) tensor, data_samples=[...])``
    each), and how many images they hold: the calibration data of an int8 model.

    Args:
        cfg: The model's config (its ``train_dataloader``).
        model: The model whose data preprocessor prepares the batches.
        count: How many images to read (at least 1).
        build_dataloader: ``Runner.build_dataloader`` or a runner's own (default: MMEngine's).

    Raises:
        PrecisionError: The config has no training set.
    """
    loader_cfg = cfg.get('train_dataloader')
    if not loader_cfg:
        raise PrecisionError("precision='int8' calibrates on the config's train_dataloader, which it lacks")
    if build_dataloader is None:
        from mmengine.runner import Runner
        build_dataloader = Runner.build_dataloader
    from mmengine.registry import DefaultScope

    batches, seen = [], 0
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):  # the dataset's and transforms' registry
        loader = build_dataloader(copy.deepcopy(loader_cfg), seed=0)
        for batch in loader:
            data = model.data_preprocessor(batch, False)
            batches.append(data)
            seen += len(data['data_samples']) if data.get('data_samples') is not None else len(data['inputs'])
            if seen >= count:
                break
    return batches, seen
