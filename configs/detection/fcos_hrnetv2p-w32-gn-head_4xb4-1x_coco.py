_base_ = './_base_/fcos_hrnetv2p-gn-head_4xb4-1x_coco.py'
width = 32
model = dict(
    backbone=dict(arch=f'w{width}', init_cfg=dict(checkpoint=f'open-mmlab://msra/hrnetv2_w{width}')),
    neck=dict(in_channels=f'w{width}'))
