"""Inference models and exports: :func:`to_deploy` (BN folded into the convolutions, channels_last, hrnet_mm's
Winograd kernels, ``torch.compile``; :mod:`.fold`), its bfloat16 and int8 forms (:mod:`.precision`), the runner hook
that tests a deploy model (:mod:`.hook`) and ONNX / TorchScript export (:mod:`.export`)."""
from .fold import (
    CompiledDeploy,
    OneDNNConv2d,
    allocator_tuned,
    fold_batchnorm,
    fold_bn_into_conv,
    fuse_onednn,
    onednn_available,
    to_deploy,
    tune_cpu_allocator,
)
from .precision import PrecisionError

__all__ = ['to_deploy', 'fold_batchnorm', 'fold_bn_into_conv', 'fuse_onednn', 'CompiledDeploy',
           'OneDNNConv2d', 'onednn_available', 'tune_cpu_allocator', 'allocator_tuned', 'PrecisionError']
