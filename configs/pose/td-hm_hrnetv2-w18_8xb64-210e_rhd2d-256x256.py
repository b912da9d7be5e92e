# mmpose 1.3.2's td-hm_hrnetv2-w18_8xb64-210e_rhd2d-256x256.py with hrnet_mm's modules.
# Written by tools/generate_zoo.py from the rules in hrnet_mm/zoo/recipes.py: edit the rules, not this file.
_base_ = 'mmpose::hand_2d_keypoint/topdown_heatmap/rhd2d/td-hm_hrnetv2-w18_8xb64-210e_rhd2d-256x256.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(type='hrnet_mm.HRNet'),
    neck=dict(_delete_=True, type='hrnet_mm.HRNetV2Neck', in_channels=[18, 36, 72, 144]))
