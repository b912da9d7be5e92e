# Faster R-CNN 2x (schedule_2x: 24 epochs, steps at 16 and 22) with HRNetV2p (hrnet_mm.HRNet + hrnet_mm.HRNetV2pNeck)
# in place of ResNet-50 + FPN: the recipe of mmdet's hrnet/faster-rcnn_hrnetv2p-w32_2x_coco.py (mmdet 3.3.0).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_2x_coco.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)

# HRNetV2p-W{width}: every derived number comes from `width`; leaves override it with the fields below.
width = 32
model = dict(
    backbone=dict(
        _delete_=True,
        type='hrnet_mm.HRNet',
        arch=f'w{width}',
        norm_eval=True,  # mmdet's HRNet default, kept by the peer recipe
        init_cfg=dict(type='Pretrained', checkpoint=f'open-mmlab://msra/hrnetv2_w{width}')),
    neck=dict(_delete_=True, type='hrnet_mm.HRNetV2pNeck', in_channels=f'w{width}', out_channels=256))
