# mmdet 3.3.0's faster-rcnn_hrnetv2p-w18-2x_coco.py with hrnet_mm's modules.
# Written by tools/generate_zoo.py from the rules in hrnet_mm/zoo/recipes.py: edit the rules, not this file.
_base_ = 'mmdet::hrnet/faster-rcnn_hrnetv2p-w18-2x_coco.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='hrnet_mm.HRNet',
        # mmdet's HRNet freezes its BN statistics by default
        norm_eval=True),
    neck=dict(type='hrnet_mm.HRNetV2pNeck'))
