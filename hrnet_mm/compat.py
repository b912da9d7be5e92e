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
"""
from __future__ import annotations

from typing import List

_APPLIED = False


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
    """The non-tensor types that mmengine's ``CheckpointHook``/``Runner.save_checkpoint`` write."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8',
                                          'uint8', 'bool', 'complex128')]
    return [HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar, *dtypes,
            (_history_buffer_getattr, 'builtins.getattr')]


def allow_mmengine_checkpoints() -> None:
    """Adds :func:`mmengine_checkpoint_globals` to torch's weights-only allow-list (idempotent)."""
    import torch.serialization as ts
    if hasattr(ts, 'add_safe_globals'):
        ts.add_safe_globals(mmengine_checkpoint_globals())


def apply() -> None:
    """Applies every fix once."""
    global _APPLIED
    if _APPLIED:
        return
    allow_mmengine_checkpoints()
    _APPLIED = True
