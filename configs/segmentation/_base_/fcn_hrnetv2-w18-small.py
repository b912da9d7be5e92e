# FCN on HRNetV2-W18-Small (v2; mmseg's fcn_hr18s): fewer blocks and modules than W18, same widths (18/36/72/144).
_base_ = './fcn_hrnetv2-w18.py'
arch = 'w18_small_v2'
model = dict(
    backbone=dict(arch=arch, init_cfg=dict(checkpoint='open-mmlab://msra/hrnetv2_w18_small')),
    neck=dict(in_channels=arch))
