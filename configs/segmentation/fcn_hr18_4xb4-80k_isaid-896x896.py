# mmseg 1.2.2's fcn_hr18_4xb4-80k_isaid-896x896.py with hrnet_mm's modules.
# Written by tools/generate_zoo.py from the rules in hrnet_mm/zoo/recipes.py: edit the rules, not this file.
_base_ = 'mmseg::hrnet/fcn_hr18_4xb4-80k_isaid-896x896.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)
model = dict(
    # mmseg's model-level pretrained becomes the backbone's init_cfg
    pretrained=None,
    backbone=dict(
        type='hrnet_mm.HRNet',
        # mmseg's HRNet fuses with bilinear upsampling
        upsample_cfg=dict(mode='bilinear', align_corners=False),
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://msra/hrnetv2_w18')))
