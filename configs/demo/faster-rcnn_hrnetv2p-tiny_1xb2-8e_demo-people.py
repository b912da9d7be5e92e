# The person detector of the detector-to-pose demo: the demo Faster R-CNN (narrow HRNetV2p) trained on the person
# boxes of the synthetic multi-person scenes (`python -m hrnet_mm.datasets coco-people data/demo/coco_people`).
# tools/infer.py runs it before the top-down pose demo model:
#   python tools/infer.py configs/demo/td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py POSE.pth \
#       data/demo/coco_people/val --det-model configs/demo/faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-people.py \
#       --det-checkpoint DET.pth --out-dir vis
_base_ = './faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py'

model = dict(roi_head=dict(bbox_head=dict(num_classes=1)))

data_root = 'data/demo/coco_people/'
metainfo = dict(classes=('person', ))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(320, 160), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 160), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/person_keypoints_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/person_keypoints_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/person_keypoints_val.json')
test_evaluator = val_evaluator
