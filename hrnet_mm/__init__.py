"""hrnet_mm: one HRNet for the OpenMMLab ecosystem.

Implements the networks of Wang et al., "Deep High-Resolution Representation Learning for Visual
Recognition", TPAMI 2020, as an MMEngine plugin package: the ``hrnet_mm.HRNet`` backbone (HRNetV1 and the
input of HRNetV2/V2p), the ``hrnet_mm.HRNetV2Neck`` and ``hrnet_mm.HRNetV2pNeck`` representations and the
``hrnet_mm.HRFuseScales`` classification head, registered in the ``hrnet_mm`` registry scope.
Importing the package also applies the runtime fixes of :mod:`hrnet_mm.runtime.compat`.
"""
import warnings

# mmengine/mmcv import pkg_resources (kept below setuptools 81 by the install); its deprecation notice is noise.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

from .runtime import compat  # noqa: E402
from .version import __version__  # noqa: E402

compat.apply()

try:  # `_base_ = 'hrnet_mm::...'` in configs (normally already done at start-up by the installed .pth file)
    import _hrnet_mm_config_hook
    _hrnet_mm_config_hook.install()
except ImportError:  # the package is imported from a source tree that was not installed
    from mmengine.config import utils as _config_utils
    _config_utils.MODULE2PACKAGE.setdefault('hrnet_mm', 'hrnet_mm')

from . import zoo  # noqa: E402,F401  (registers the hrnet_mm:// checkpoint scheme with mmengine)
from .apis import get_inferencer, get_model, list_models  # noqa: E402
from .models import HRFuseScales, HRNet, HRNetV2Neck, HRNetV2pNeck  # noqa: E402  (registers the modules)
from .registry import MODELS  # noqa: E402

__all__ = ['__version__', 'HRNet', 'HRNetV2Neck', 'HRNetV2pNeck', 'HRFuseScales', 'MODELS', 'list_models',
           'get_model', 'get_inferencer']
