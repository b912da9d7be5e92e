# Face landmarks (WFLW, 98 points) with HRNetV2-W18: hrnet_mm.HRNet (all branches, mmpose's bilinear fusion) and
# hrnet_mm.HRNetV2Neck (bilinear upsample + concat, 15C channels) in place of mmpose's HRNet and
# FeatureMapProcessor(concat=True). The recipe of mmpose's
# face_2d_keypoint/topdown_heatmap/wflw/td-hm_hrnetv2-w18_8xb64-60e_wflw-256x256.py (mmpose 1.3.2), inherited whole.
_base_ = 'mmpose::face_2d_keypoint/topdown_heatmap/wflw/td-hm_hrnetv2-w18_8xb64-60e_wflw-256x256.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)

width = 18
model = dict(
    backbone=dict(
        _delete_=True,
        type='hrnet_mm.HRNet',
        arch=f'w{width}',
        upsample_cfg=dict(mode='bilinear', align_corners=False),
        init_cfg=dict(type='Pretrained', checkpoint=f'open-mmlab://msra/hrnetv2_w{width}')),
    neck=dict(_delete_=True, type='hrnet_mm.HRNetV2Neck', in_channels=f'w{width}', out_channels=None),
    head=dict(in_channels=15 * width, conv_out_channels=(15 * width, )))
