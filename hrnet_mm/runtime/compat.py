"""Runtime fixes for the pinned OpenMMLab stack on current torch, applied when ``hrnet_mm`` is imported
(and so by ``custom_imports=dict(imports=['hrnet_mm'])`` in every config).

* Resuming from an mmengine checkpoint on torch >= 2.6: ``torch.load`` now defaults to
  ``weights_only=True`` and mmengine 0.10.7 calls it without the argument, so a checkpoint that mmengine
  itself wrote fails with ``pickle.UnpicklingError`` (its message hub holds ``HistoryBuffer`` objects and
  numpy arrays). Safety stays on: exactly the types found in mmengine's own checkpoints are added to torch's
  allow-list of safe globals, nothing else. A ``HistoryBuffer`` pickles its statistics methods as
  ``getattr(HistoryBuffer, 'mean')``; ``getattr`` itself stays forbidden and is replaced, for these files, by
  a function that resolves only the statistics methods of ``HistoryBuffer``. Any other pickled object
  still fails to load.
* Distributed training on a machine without a GPU (``--launcher pytorch``, e.g. ``tools/dist_train.sh`` with
  2 CPU processes): mmengine 0.10.7's ``init_dist`` calls ``torch.cuda.set_device(local_rank)``
  unconditionally (``RuntimeError: Found no NVIDIA driver``), defaults to the NCCL backend, and the runner
  wraps the model in ``MMDistributedDataParallel(device_ids=[LOCAL_RANK])``, which torch refuses for a CPU
  module. Only when no accelerator is present (no CUDA, NPU, MLU or MUSA), hrnet_mm's wrappers of
  mmengine's pytorch/slurm/mpi initialisers skip that ``set_device`` call and replace ``nccl`` by ``gloo``
  (with a warning), and ``MMDistributedDataParallel`` of a CPU module is built without ``device_ids`` /
  ``output_device``. ``SyncBatchNorm`` has no CPU implementation in torch (it raises in the forward), so on
  CPU its layers are reverted to plain BatchNorm with a warning: every rank then keeps its own BN statistics,
  as with ``broadcast_buffers=False``. With an accelerator present every call goes to mmengine's original
  code unchanged (the NCCL path is untouched).
* Exact resumption: mmengine checkpoints hold no random-number state, so a resumed run draws different
  random numbers (proposal sampling, augmentation, dropout) from the run it continues. The runner's
  checkpoints now also carry ``rng_state`` (python ``random``, numpy, torch CPU and CUDA generators) and
  ``Runner.resume`` restores it last, after mmengine's own re-seeding, so an interrupted and resumed
  training run ends with the weights of the uninterrupted run. ``load_from`` (fine-tuning) is unaffected.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, Iterator, List

_APPLIED = False
_PATCHED = '_hrnet_mm_cpu_distributed'


def _history_buffer_getattr(obj: object, name: str) -> object:
    """``getattr`` restricted to what mmengine's ``HistoryBuffer`` pickles: its statistics methods."""
    import pickle

    from mmengine.logging.history_buffer import HistoryBuffer

    # the built-in statistics (registered lazily by the first HistoryBuffer) and any registered later
    if obj is HistoryBuffer and (name in ('min', 'max', 'current', 'mean')
                                 or name in HistoryBuffer._statistics_methods):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not part of an mmengine checkpoint; '
                                 'refusing it under weights_only loading')


def mmengine_checkpoint_globals() -> List[object]:
    """The non-tensor types that mmengine's ``CheckpointHook``/``Runner.save_checkpoint`` write (with the
    ``rng_state`` that :func:`resume_random_state` adds)."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    # dtype classes of the arrays and scalars they hold (uint32: numpy's generator state, see rng_state)
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8',
                                          'uint64', 'uint32', 'uint16', 'uint8', 'bool', 'complex128')]
    # bytes: an empty array is pickled as bytes() (mmpose's skeleton_link_colors of a set without a skeleton)
    return [HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar, *dtypes, bytes,
            (_history_buffer_getattr, 'builtins.getattr')]


def allow_mmengine_checkpoints() -> None:
    """Adds :func:`mmengine_checkpoint_globals` to torch's weights-only allow-list (idempotent)."""
    import torch.serialization as ts
    if hasattr(ts, 'add_safe_globals'):
        ts.add_safe_globals(mmengine_checkpoint_globals())


def accelerator_available() -> bool:
    """Whether mmengine's distributed initialisers have a device to bind to (CUDA, NPU, MLU or MUSA)."""
    import torch
    from mmengine.device import is_mlu_available, is_musa_available, is_npu_available

    return torch.cuda.is_available() or is_npu_available() or is_mlu_available() or is_musa_available()


@contextlib.contextmanager
def _cuda_set_device_skipped() -> Iterator[None]:
    """Makes ``torch.cuda.set_device`` a no-op for the duration of the block (only used without CUDA)."""
    import torch

    original = torch.cuda.set_device
    torch.cuda.set_device = lambda device: None
    try:
        yield
    finally:
        torch.cuda.set_device = original


def cpu_safe_dist_init(init: Callable[..., None]) -> Callable[..., None]:
    """Wraps one of mmengine's ``_init_dist_{pytorch,slurm,mpi}(backend, ...)`` for machines without a GPU.

    With an accelerator the original is called unchanged. Without one, ``nccl`` becomes ``gloo`` and the
    original runs with ``torch.cuda.set_device`` skipped; everything else (environment parsing, the
    ``init_process_group`` call, its keyword arguments) stays mmengine's own code.

    Args:
        init: The mmengine initialiser to wrap.

    Returns:
        The wrapper (marked so that wrapping twice is a no-op).
    """
    if getattr(init, _PATCHED, False):
        return init

    @functools.wraps(init)
    def wrapper(backend: str, *args: Any, **kwargs: Any) -> None:
        if accelerator_available():
            return init(backend, *args, **kwargs)
        if backend == 'nccl':
            warnings.warn('hrnet_mm: no GPU on this machine; distributed backend nccl replaced by gloo '
                          "(set env_cfg.dist_cfg.backend='gloo' to silence this)", RuntimeWarning, stacklevel=2)
            backend = 'gloo'
        with _cuda_set_device_skipped():
            return init(backend, *args, **kwargs)

    setattr(wrapper, _PATCHED, True)
    return wrapper


def _is_cpu_module(module: Any) -> bool:
    import torch

    tensors = list(module.parameters()) + list(module.buffers())
    return all(t.device.type == 'cpu' for t in tensors) if isinstance(module, torch.nn.Module) else False


def allow_cpu_distributed() -> None:
    """Lets mmengine's distributed training run on CPU processes (gloo) when no GPU is present (idempotent).

    Patches ``mmengine.dist.utils._init_dist_{pytorch,slurm,mpi}`` (looked up by ``init_dist`` at call time)
    with :func:`cpu_safe_dist_init` and ``MMDistributedDataParallel.__init__`` so that, without an
    accelerator, a CPU module is wrapped without ``device_ids``/``output_device`` and with its SyncBN layers
    reverted to BatchNorm (torch's SyncBatchNorm has no CPU implementation).
    """
    from mmengine.dist import utils as dist_utils
    from mmengine.model import MMDistributedDataParallel

    for name in ('_init_dist_pytorch', '_init_dist_slurm', '_init_dist_mpi'):
        setattr(dist_utils, name, cpu_safe_dist_init(getattr(dist_utils, name)))

    original_init = MMDistributedDataParallel.__init__
    if getattr(original_init, _PATCHED, False):
        return

    @functools.wraps(original_init)
    def ddp_init(self: Any, module: Any, *args: Any, **kwargs: Any) -> None:
        if not accelerator_available() and _is_cpu_module(module):
            kwargs['device_ids'] = None
            kwargs['output_device'] = None
            module = _revert_sync_bn_on_cpu(module)
        original_init(self, module, *args, **kwargs)

    setattr(ddp_init, _PATCHED, True)
    MMDistributedDataParallel.__init__ = ddp_init


def _revert_sync_bn_on_cpu(module: Any) -> Any:
    """Replaces SyncBN layers (torch's or mmcv's) by BatchNorm, with a warning, when there are any."""
    import torch

    if not any(isinstance(m, torch.nn.SyncBatchNorm) or type(m).__name__ == 'SyncBatchNorm'
               for m in module.modules()):
        return module
    from mmengine.model import revert_sync_batchnorm

    warnings.warn('hrnet_mm: SyncBatchNorm has no CPU implementation; reverted to BatchNorm for CPU '
                  'distributed training (each rank keeps its own BN statistics)', RuntimeWarning, stacklevel=3)
    return revert_sync_batchnorm(module)


def get_rng_state() -> dict:
    """The state of every global random-number generator a training run draws from."""
    import random

    import numpy as np
    import torch
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores what :func:`get_rng_state` returned."""
    import random

    import numpy as np
    import torch
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def resume_random_state() -> None:
    """Saves :func:`get_rng_state` in the runner's checkpoints and restores it at the end of ``resume``."""
    import mmengine.runner.runner as runner_module
    Runner = runner_module.Runner
    if getattr(Runner.resume, '_hrnet_mm_rng', False):
        return
    save, resume = runner_module.save_checkpoint, Runner.resume

    @functools.wraps(save)
    def save_with_rng(checkpoint: dict, *args: Any, **kwargs: Any) -> None:
        if isinstance(checkpoint, dict) and 'meta' in checkpoint:
            checkpoint['rng_state'] = get_rng_state()
        return save(checkpoint, *args, **kwargs)

    @functools.wraps(resume)
    def resume_with_rng(self: Any, *args: Any, **kwargs: Any) -> None:
        found: List[dict] = []
        load = self.load_checkpoint

        def load_and_keep(*a: Any, **k: Any) -> dict:
            checkpoint = load(*a, **k)
            if isinstance(checkpoint, dict) and 'rng_state' in checkpoint:
                found.append(checkpoint['rng_state'])
            return checkpoint
        self.load_checkpoint = load_and_keep
        try:
            resume(self, *args, **kwargs)
        finally:
            del self.load_checkpoint
        if found:
            set_rng_state(found[-1])

    resume_with_rng._hrnet_mm_rng = True
    runner_module.save_checkpoint = save_with_rng
    Runner.resume = resume_with_rng


def apply() -> None:
    """Applies every fix once."""
    global _APPLIED
    if _APPLIED:
        return
    allow_mmengine_checkpoints()
    allow_cpu_distributed()
    resume_random_state()
    _APPLIED = True
