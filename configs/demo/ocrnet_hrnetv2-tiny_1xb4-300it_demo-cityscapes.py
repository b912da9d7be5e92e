# OCRNet on a narrow HRNetV2 (hrnet_mm.HRNet; mmseg's FCN and OCR heads cascaded on the concatenated branches) on
# the synthetic Cityscapes-layout demo set of hrnet_mm.datasets, on CPU: the recipe of hrnet_mm's
# segmentation/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py (mmseg's, with hrnet_mm's modules), shrunk. Write the
# data with
#   python -m hrnet_mm.datasets cityscapes data/demo/cityscapes
# then
#   python tools/train.py configs/demo/ocrnet_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py
_base_ = 'hrnet_mm::segmentation/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py'

norm_cfg = dict(type='BN', requires_grad=True)
channels = [8, 16, 32, 64]
extra = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ), num_channels=(16, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=channels[:2]),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=channels[:3]),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1), num_channels=channels))
crop_size = (64, 128)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(extra=extra, stem_channels=32, norm_cfg=norm_cfg, init_cfg=None),
    decode_head=[
        dict(type='FCNHead', in_channels=channels, in_index=(0, 1, 2, 3), input_transform='resize_concat',
             channels=sum(channels), kernel_size=1, num_convs=1, concat_input=False, dropout_ratio=-1,
             num_classes=19, norm_cfg=norm_cfg, align_corners=False,
             loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
        dict(type='OCRHead', in_channels=channels, in_index=(0, 1, 2, 3), input_transform='resize_concat',
             channels=64, ocr_channels=32, dropout_ratio=-1, num_classes=19, norm_cfg=norm_cfg,
             align_corners=False, loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    ])

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
