# FCN on HRNetV2-W18, the model of mmseg's _base_/models/fcn_hr18.py (mmsegmentation 1.2.2) built from hrnet_mm:
# hrnet_mm.HRNet with mmseg's bilinear fusion, hrnet_mm.HRNetV2Neck (bilinear upsample, concat 15C, 1x1 conv +
# SyncBN + ReLU) and an FCNHead reduced to its classifier (num_convs=0). Together they compute exactly mmseg's
# FCNHead(input_transform='resize_concat', num_convs=1, kernel_size=1, concat_input=False).
_base_ = 'mmseg::_base_/models/fcn_hr18.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
# HRNetV2-W{width}: the concatenated representation has 15 * width channels (C + 2C + 4C + 8C).
width = 18
model = dict(
    pretrained=None,  # mmseg's model-level key; the weights come from the backbone's init_cfg instead
    backbone=dict(
        _delete_=True,
        type='hrnet_mm.HRNet',
        arch=f'w{width}',
        norm_cfg=norm_cfg,
        norm_eval=False,
        upsample_cfg=dict(mode='bilinear', align_corners=False),  # mmseg's fusion upsampling
        init_cfg=dict(type='Pretrained', checkpoint=f'open-mmlab://msra/hrnetv2_w{width}')),
    neck=dict(
        type='hrnet_mm.HRNetV2Neck',
        in_channels=f'w{width}',
        out_channels=15 * width,
        norm_cfg=norm_cfg,
        align_corners=False),
    decode_head=dict(
        in_channels=15 * width,
        in_index=0,
        input_transform=None,
        channels=15 * width,
        num_convs=0))
