"""hrnet_mm's CPU kernels: Winograd 3x3 convolutions (:mod:`.winograd`) and batch norm fused with the residual sum
and ReLU (:mod:`.fused_norm`), compiled from ``csrc/`` into the dispatcher operators ``torch.ops.hrnet_mm.*``
(training: ``train_conv3x3``, ``batch_norm_act``; the deploy model: ``winograd_conv3x3``), with their fake kernels
(:mod:`.fake`), and the module conversion that puts the training kernels into a model (:mod:`.convert`)."""
from .convert import convert_cpu_kernels, revert_cpu_kernels, uses_cpu_kernels

__all__ = ['convert_cpu_kernels', 'revert_cpu_kernels', 'uses_cpu_kernels']
