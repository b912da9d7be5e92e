# FCOS (GN head, 1x) with HRNetV2p (hrnet_mm.HRNet + hrnet_mm.HRNetV2pNeck with stride-2 level convs) in place
# of the caffe ResNet-50 + FPN: the recipe of mmdet's hrnet/fcos_hrnetv2p-w32-gn-head_4xb4-1x_coco.py (mmdet 3.3.0),
# including its BGR input normalisation.
_base_ = 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_4xb4-1x_coco.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)

# HRNetV2p-W{width}: every derived number comes from `width`; leaves override it with the fields below.
width = 32
model = dict(
    data_preprocessor=dict(mean=[103.53, 116.28, 123.675], std=[57.375, 57.12, 58.395], bgr_to_rgb=False),
    backbone=dict(
        _delete_=True,
        type='hrnet_mm.HRNet',
        arch=f'w{width}',
        norm_eval=True,  # mmdet's HRNet default, kept by the peer recipe
        init_cfg=dict(type='Pretrained', checkpoint=f'open-mmlab://msra/hrnetv2_w{width}')),
    neck=dict(
        _delete_=True,
        type='hrnet_mm.HRNetV2pNeck',
        in_channels=f'w{width}',
        out_channels=256,
        stride=2,
        num_outs=5))
