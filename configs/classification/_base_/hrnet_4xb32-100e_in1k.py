# ImageNet classification with HRNet and the paper's head (hrnet_mm.HRFuseScales to 2048 channels, global average
# pooling, linear classifier): the recipe of mmpretrain's hrnet/hrnet-w18_4xb32_in1k.py (mmpretrain 1.2.0) -- SGD
# lr 0.1 for 4 GPUs x 32 images (auto-scaled from a batch of 128), cosine schedule over 100 epochs, from scratch.
_base_ = [
    'mmpretrain::_base_/models/hrnet/hrnet-w18.py',
    'mmpretrain::_base_/datasets/imagenet_bs32_pil_resize.py',
    'mmpretrain::_base_/schedules/imagenet_bs256_coslr.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)

width = 18
model = dict(
    backbone=dict(_delete_=True, type='hrnet_mm.HRNet', arch=f'w{width}'),
    neck=[dict(type='hrnet_mm.HRFuseScales', in_channels=f'w{width}'), dict(type='GlobalAveragePooling')])

# base_batch_size = (4 GPUs) x (32 samples per GPU)
auto_scale_lr = dict(base_batch_size=128)
