# FCN on a narrow HRNetV2 (hrnet_mm.HRNet + hrnet_mm.HRNetV2Neck) on the synthetic Cityscapes-layout demo set
# (hrnet_mm.datasets: 160x80 street scenes, trainId label PNGs), on CPU. Write the data with
#   python -m hrnet_mm.datasets cityscapes data/demo/cityscapes
# then
#   mim train mmseg configs/demo/fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py --gpus 0
# The neck concatenates the upsampled branches (the HRNetV2 representation, 120 channels); mmseg's FCNHead mixes
# them with its one 1x1 ConvModule and classifies, with the keys of mmseg's fcn_hr18 models.
_base_ = 'mmseg::hrnet/fcn_hr18_4xb2-40k_cityscapes-512x1024.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)

norm_cfg = dict(type='BN', requires_grad=True)
arch = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ), num_channels=(16, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=(8, 16)),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=(8, 16, 32)),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1),
                num_channels=(8, 16, 32, 64)))
crop_size = (64, 128)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(_delete_=True, type='hrnet_mm.HRNet', arch=arch, stem_channels=32, norm_cfg=norm_cfg,
                  upsample_cfg=dict(mode='bilinear', align_corners=False)),
    neck=dict(type='hrnet_mm.HRNetV2Neck', in_channels=[8, 16, 32, 64]),
    decode_head=dict(in_channels=120, channels=120, in_index=0, input_transform=None, norm_cfg=norm_cfg))

data_root = 'data/demo/cityscapes/'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(160, 80), ratio_range=(0.8, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 80), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 300
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=0.0005))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(by_epoch=False, interval=max_iters))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
