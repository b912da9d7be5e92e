# mmpose 1.3.2's td-hm_hrnet-w32_udp-regress-8xb64-210e_coco-256x192.py with hrnet_mm's modules.
# Written by tools/generate_zoo.py from the rules in hrnet_mm/zoo/recipes.py: edit the rules, not this file.
_base_ = 'mmpose::body_2d_keypoint/topdown_heatmap/coco/td-hm_hrnet-w32_udp-regress-8xb64-210e_coco-256x192.py'
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='hrnet_mm.HRNet',
        # mmpose's HRNet returns the stride-4 map only by default
        extra=dict(stage4=dict(multiscale_output=False))))
