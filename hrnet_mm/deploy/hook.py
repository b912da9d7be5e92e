"""Testing a model as it will be deployed: :class:`DeployHook` puts :func:`hrnet_mm.deploy.to_deploy`'s model (in
float32, bfloat16 or int8) in the runner before the test loop, so that the task library's own evaluator scores
exactly that model. ``tools/test.py --deploy PRECISION`` adds it; a config can too::

    custom_hooks = [dict(type='hrnet_mm.DeployHook', precision='int8', calibration_images=32)]
"""
from __future__ import annotations

import copy
from typing import Any

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
        cfg = runner.cfg.get('train_dataloader')
        if not cfg:
            raise PrecisionError("precision='int8' calibrates on the config's train_dataloader, which it lacks")
        loader = runner.build_dataloader(copy.deepcopy(cfg), seed=0)
        items, seen = [], 0
        for batch in loader:
            data = model.data_preprocessor(batch, False)
            items.append(dict(inputs=data['inputs'], data_samples=data['data_samples'], mode='tensor'))
            seen += len(data['data_samples']) if data.get('data_samples') is not None else len(data['inputs'])
            if seen >= self.calibration_images:
                break
        self._seen = seen
        return items
