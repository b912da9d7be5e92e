# Face landmarks (COFW format, 29 points) with a narrow HRNetV2 (hrnet_mm.HRNet + hrnet_mm.HRNetV2Neck) on the
# synthetic face set of hrnet_mm.datasets, on CPU: the recipe of hrnet_mm's pose/td-hm_hrnetv2-w18_8xb64-60e_cofw-
# 256x256.py (mmpose's, with hrnet_mm's modules), shrunk. Write the data with
#   python -m hrnet_mm.datasets cofw data/demo/cofw
# then
#   python tools/train.py configs/demo/td-hm_hrnetv2-tiny_1xb8-20e_demo-cofw-96x96.py
# Validation: mmpose's NME, normalised by the distance of landmarks 8 and 9 (COFW's inter-ocular pair).
_base_ = 'hrnet_mm::pose/td-hm_hrnetv2-w18_8xb64-60e_cofw-256x256.py'

channels = (8, 16, 32, 64)
extra = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ), num_channels=(16, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=channels[:2]),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=channels[:3]),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1), num_channels=channels))
codec = dict(type='MSRAHeatmap', input_size=(96, 96), heatmap_size=(24, 24), sigma=1.5)
model = dict(
    backbone=dict(extra=extra, stem_channels=32, init_cfg=None),
    neck=dict(in_channels=list(channels)),
    head=dict(in_channels=sum(channels), conv_out_channels=(sum(channels), ), decoder=codec))

data_root = 'data/demo/cofw/'
train_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale'),
    dict(type='RandomFlip', direction='horizontal'),
    dict(type='RandomBBoxTransform', shift_prob=0, rotate_factor=20, scale_factor=(0.85, 1.15)),
    dict(type='TopdownAffine', input_size=codec['input_size']),
    dict(type='GenerateTarget', encoder=codec),
    dict(type='PackPoseInputs')
]
val_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale'),
    dict(type='TopdownAffine', input_size=codec['input_size']),
    dict(type='PackPoseInputs')
]
train_dataloader = dict(batch_size=8, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=16, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=val_pipeline))
test_dataloader = val_dataloader

max_epochs = 20
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', begin=0, end=30, start_factor=0.01, by_epoch=False),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, begin=0, end=max_epochs, by_epoch=True)
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs, save_best=None))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
