# Top-down heatmap pose estimation with a narrow HRNet (hrnet_mm.HRNet, HRNetV1: out_indices=(0,)) on the
# synthetic COCO person-keypoints demo set (hrnet_mm.datasets: 17 COCO keypoints on stick figures), on CPU.
# Write the data with
#   python -m hrnet_mm.datasets coco-keypoints data/demo/coco_keypoints
# then
#   mim train mmpose configs/demo/td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py --gpus 0
# Validation uses the ground-truth person boxes (no detection results file) and mmpose's CocoMetric (OKS AP).
_base_ = 'mmpose::body_2d_keypoint/topdown_heatmap/coco/td-hm_hrnet-w32_8xb64-210e_coco-256x192.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)

arch = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ), num_channels=(16, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=(16, 32)),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=(16, 32, 64)),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1),
                num_channels=(16, 32, 64, 128)))
codec = dict(type='MSRAHeatmap', input_size=(96, 128), heatmap_size=(24, 32), sigma=2)
model = dict(
    backbone=dict(_delete_=True, type='hrnet_mm.HRNet', arch=arch, stem_channels=32, out_indices=(0, )),
    head=dict(in_channels=16, out_channels=17, decoder=codec))

data_root = 'data/demo/coco_keypoints/'
train_pipeline = [
    dict(type='LoadImage'),
    dict(type='GetBBoxCenterScale'),
    dict(type='RandomFlip', direction='horizontal'),
    dict(type='RandomHalfBody'),
    dict(type='RandomBBoxTransform', rotate_factor=20.0),
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
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/person_keypoints_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/person_keypoints_val.json', bbox_file=None,
                 data_prefix=dict(img='val/'), pipeline=val_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/person_keypoints_val.json')
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(type='Adam', lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', begin=0, end=30, start_factor=0.01, by_epoch=False),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, begin=0, end=max_epochs, by_epoch=True)
]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs, save_best=None))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
