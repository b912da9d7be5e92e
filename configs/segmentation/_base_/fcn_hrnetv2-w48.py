# FCN on HRNetV2-W48 (mmseg's fcn_hr48): the W18 model with every width-derived number from `width`.
_base_ = './fcn_hrnetv2-w18.py'
width = 48
model = dict(
    backbone=dict(arch=f'w{width}', init_cfg=dict(checkpoint=f'open-mmlab://msra/hrnetv2_w{width}')),
    neck=dict(in_channels=f'w{width}', out_channels=15 * width),
    decode_head=dict(in_channels=15 * width, channels=15 * width))
