# Top-down heatmap pose estimation with HRNetV1-W48 (hrnet_mm.HRNet returning the stride-4 branch only): the
# recipe of mmpose's body_2d_keypoint/topdown_heatmap/coco/td-hm_hrnet-w48_8xb32-210e_coco-384x288.py (mmpose 1.3.2),
# inherited whole (data, codec, schedule, head) with the backbone replaced.
_base_ = 'mmpose::body_2d_keypoint/topdown_heatmap/coco/td-hm_hrnet-w48_8xb32-210e_coco-384x288.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)

width = 48
model = dict(
    backbone=dict(
        _delete_=True,
        type='hrnet_mm.HRNet',
        arch=f'w{width}',
        out_indices=(0, ),  # HRNetV1: the last module fuses into branch 0 only
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://download.openmmlab.com/mmpose/pretrain_models/hrnet_w48-8ef0771d.pth')),
    head=dict(in_channels=width))
