_base_ = './_base_/hrnet_4xb32-100e_in1k.py'
width = 32
model = dict(
    backbone=dict(arch=f'w{width}'),
    neck=[dict(type='hrnet_mm.HRFuseScales', in_channels=f'w{width}'), dict(type='GlobalAveragePooling')])
