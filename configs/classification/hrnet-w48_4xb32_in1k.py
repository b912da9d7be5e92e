# mmpretrain 1.2.0's hrnet-w48_4xb32_in1k.py with hrnet_mm's modules.
# Written by tools/generate_zoo.py from the rules in hrnet_mm/zoo/recipes.py: edit the rules, not this file.
_base_ = 'mmpretrain::hrnet/hrnet-w48_4xb32_in1k.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(type='hrnet_mm.HRNet'),
    neck=[dict(type='hrnet_mm.HRFuseScales', in_channels=(48, 96, 192, 384)), dict(type='GlobalAveragePooling')])
