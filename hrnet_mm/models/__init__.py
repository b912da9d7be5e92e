"""hrnet_mm's models: the HRNet backbone, the HRNetV2/HRNetV2p necks and the classification head."""
from .arch import PRESETS, StageSpec, get_preset
from .cls_neck import HRFuseScales
from .hrnet import HRModule, HRNet
from .necks import HRNetV2Neck, HRNetV2pNeck, branch_channels

__all__ = ['HRNet', 'HRModule', 'HRNetV2Neck', 'HRNetV2pNeck', 'HRFuseScales', 'StageSpec', 'PRESETS',
           'get_preset', 'branch_channels']
