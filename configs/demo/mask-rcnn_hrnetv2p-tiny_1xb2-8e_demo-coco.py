# Mask R-CNN with a narrow HRNetV2p (hrnet_mm.HRNet + hrnet_mm.HRNetV2pNeck) on the synthetic COCO-format demo set
# of hrnet_mm.datasets (boxes and polygon masks), on CPU: the recipe of hrnet_mm's
# detection/mask-rcnn_hrnetv2p-w18-2x_coco.py (mmdet's, with hrnet_mm's modules), shrunk. Write the data with
#   python -m hrnet_mm.datasets coco data/demo/coco --train 48
# then
#   python tools/train.py configs/demo/mask-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py
_base_ = 'hrnet_mm::detection/mask-rcnn_hrnetv2p-w18-2x_coco.py'

channels = [8, 16, 32, 64]
extra = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ), num_channels=(16, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=channels[:2]),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=channels[:3]),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1), num_channels=channels))
model = dict(
    data_preprocessor=dict(pad_size_divisor=1),  # hrnet_mm.HRNet takes any input size
    backbone=dict(extra=extra, init_cfg=None),
    neck=dict(in_channels=channels, out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=2),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32, num_classes=2)))

data_root = 'data/demo/coco/'
metainfo = dict(classes=('square', 'disc'))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
randomness = dict(seed=0)
# half the recipe's rate (0.02 for 16 images a step) and two epochs of warm-up: at 0.02 after 10 iterations, one
# CI run ended with its loss at 1.06 and box mAP@0.5 at 0.08 (seed 0; seeds 1-5 gave 0.67-0.86 here)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50)]
optim_wrapper = dict(optimizer=dict(lr=0.01), clip_grad=dict(max_norm=10))
default_hooks = dict(logger=dict(interval=2), checkpoint=dict(interval=max_epochs))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
