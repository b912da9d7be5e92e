# Bottom-up pose estimation (DEKR: keypoint heatmaps and per-pixel displacements from each person's centre, no
# person detector) with a narrow HRNet (hrnet_mm.HRNet, all branches, + hrnet_mm.HRNetV2Neck) on the synthetic
# COCO person-keypoints set of hrnet_mm.datasets with two people per image, on CPU: the recipe of hrnet_mm's
# pose/dekr_hrnet-w32_8xb10-140e_coco-512x512.py (mmpose's, with hrnet_mm's modules), shrunk. Write the data with
#   python -m hrnet_mm.datasets coco-keypoints-multi data/demo/coco_keypoints_multi
# then
#   python tools/train.py configs/demo/dekr_hrnet-tiny_1xb4-15e_demo-coco-128x128.py
# Validation: mmpose's CocoMetric (OKS AP) on the whole images.
_base_ = 'hrnet_mm::pose/dekr_hrnet-w32_8xb10-140e_coco-512x512.py'

channels = [16, 32, 64, 128]
extra = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ), num_channels=(16, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=channels[:2]),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=channels[:3]),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1), num_channels=channels))
codec = dict(type='SPR', input_size=(128, 128), heatmap_size=(32, 32), sigma=(2, 1),
             minimal_diagonal_length=32**0.5, generate_keypoint_heatmaps=True, decode_max_instances=10)
model = dict(
    backbone=dict(extra=extra, stem_channels=32, init_cfg=None),
    neck=dict(in_channels=channels),
    # Narrow displacement branches (its deformable convolutions are slow on a CPU); no rescoring net, a
    # pretrained file that DEKR does not train (poses keep their heatmap scores)
    head=dict(in_channels=sum(channels), num_heatmap_filters=16, num_displacement_filters_per_keypoint=2,
              decoder=codec, rescore_cfg=None),
    test_cfg=dict(flip_test=False))

data_root = 'data/demo/coco_keypoints_multi/'
train_pipeline = [
    dict(type='LoadImage'),
    dict(type='BottomupRandomAffine', input_size=codec['input_size'], rotate_factor=15, scale_factor=(0.8, 1.2)),
    dict(type='RandomFlip', direction='horizontal'),
    dict(type='GenerateTarget', encoder=codec),
    dict(type='BottomupGetHeatmapMask'),
    dict(type='PackPoseInputs'),
]
val_pipeline = [
    dict(type='LoadImage'),
    dict(type='BottomupResize', input_size=codec['input_size'], size_factor=32, resize_mode='expand'),
    dict(type='PackPoseInputs',
         meta_keys=('id', 'img_id', 'img_path', 'crowd_index', 'ori_shape', 'img_shape', 'input_size',
                    'input_center', 'input_scale', 'flip', 'flip_direction', 'flip_indices', 'raw_ann_info',
                    'skeleton_links'))
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/person_keypoints_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/person_keypoints_val.json',
                 data_prefix=dict(img='val/'), pipeline=val_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/person_keypoints_val.json')
test_evaluator = val_evaluator

max_epochs = 15
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(type='Adam', lr=2e-3))
param_scheduler = [dict(type='LinearLR', begin=0, end=30, start_factor=0.01, by_epoch=False)]  # then constant
randomness = dict(seed=0)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs, save_best=None))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
