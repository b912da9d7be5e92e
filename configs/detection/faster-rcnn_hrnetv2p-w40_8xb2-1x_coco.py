_base_ = './_base_/faster-rcnn_hrnetv2p_8xb2-1x_coco.py'
width = 40
model = dict(
    backbone=dict(arch=f'w{width}', init_cfg=dict(checkpoint=f'open-mmlab://msra/hrnetv2_w{width}')),
    neck=dict(in_channels=f'w{width}'))
