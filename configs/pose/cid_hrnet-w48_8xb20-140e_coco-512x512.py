# mmpose 1.3.2's cid_hrnet-w48_8xb20-140e_coco-512x512.py with hrnet_mm's modules.
# Written by tools/generate_zoo.py from the rules in hrnet_mm/zoo/recipes.py: edit the rules, not this file.
_base_ = 'mmpose::body_2d_keypoint/cid/coco/cid_hrnet-w48_8xb20-140e_coco-512x512.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(type='hrnet_mm.HRNet'),
    neck=dict(_delete_=True, type='hrnet_mm.HRNetV2Neck', in_channels=[48, 96, 192, 384]))
