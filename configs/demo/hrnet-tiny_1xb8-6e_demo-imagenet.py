# Image classification with a narrow HRNet (hrnet_mm.HRNet + hrnet_mm.HRFuseScales) on the synthetic
# ImageNet-style folder set (hrnet_mm.datasets: 4 texture classes, 100 64x64 JPEGs each), on CPU. Write the data with
#   python -m hrnet_mm.datasets imagenet data/demo/imagenet
# then
#   mim train mmpretrain configs/demo/hrnet-tiny_1xb8-6e_demo-imagenet.py --gpus 0
_base_ = 'mmpretrain::hrnet/hrnet-w18_4xb32_in1k.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)

arch = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ), num_channels=(16, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=(8, 16)),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=(8, 16, 32)),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1),
                num_channels=(8, 16, 32, 64)))
num_classes = 4
model = dict(
    data_preprocessor=dict(num_classes=num_classes),
    backbone=dict(_delete_=True, type='hrnet_mm.HRNet', arch=arch, stem_channels=32),
    neck=[
        dict(type='hrnet_mm.HRFuseScales', in_channels=(8, 16, 32, 64), out_channels=256),
        dict(type='GlobalAveragePooling'),
    ],
    head=dict(in_channels=256, num_classes=num_classes, topk=(1, )))

data_root = 'data/demo/imagenet/'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.7, 1.0), backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='train/',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root, data_prefix='val/',
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

max_epochs = 6
optim_wrapper = dict(optimizer=dict(_delete_=True, type='Adam', lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', T_max=max_epochs, by_epoch=True, begin=0, end=max_epochs)
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(logger=dict(interval=8), checkpoint=dict(interval=max_epochs))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
