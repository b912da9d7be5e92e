"""hrnet_mm_runtime's NumPy pieces against the libraries' own code on the same inputs: the test pipelines'
transforms (mmcv/mmdet/mmseg/mmpose/mmpretrain), box decoding and NMS (mmdet, mmcv, torchvision, mmpose), the
flip test and the heatmap codecs (mmpose), the bilinear resize (torch)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hrnet_mm_runtime import boxes as B
from hrnet_mm_runtime import keypoints as K
from hrnet_mm_runtime import transforms as T


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize('shape', [(100, 150), (333, 97), (64, 64)])
@pytest.mark.parametrize('scale,keep_ratio', [((320, 160), True), ((1333, 800), True), ((96, 80), False)])
def test_resize_equals_mmdet_and_mmcv(shape, scale, keep_ratio):
    from mmcv.transforms import Resize as MMCVResize
    from mmdet.datasets.transforms import Resize as DetResize

    img = _image(*shape)
    got, factor = T.resize(img, scale, keep_ratio)
    for transform in (DetResize(scale=scale, keep_ratio=keep_ratio), MMCVResize(scale=scale, keep_ratio=keep_ratio)):
        ref = transform(dict(img=img.copy(), img_shape=img.shape[:2]))
        assert np.array_equal(got, ref['img'])
        assert np.allclose(factor, ref['scale_factor'], rtol=0, atol=1e-12)


@pytest.mark.parametrize('backend', ['cv2', 'pillow'])
@pytest.mark.parametrize('edge', ['short', 'long', 'width', 'height'])
def test_resize_edge_and_center_crop_equal_mmpretrain(edge, backend):
    from mmcv.transforms import CenterCrop
    from mmpretrain.datasets.transforms import ResizeEdge

    img = _image(120, 90, 1)
    got, _ = T.resize_edge(img, 64, edge, backend)
    ref = ResizeEdge(scale=64, edge=edge, backend=backend)(dict(img=img.copy(), img_shape=img.shape[:2]))['img']
    assert np.array_equal(got, ref)
    for size in ((48, 40), (200, 30)):
        crop = CenterCrop(crop_size=size)(dict(img=got.copy(), img_shape=got.shape[:2]))['img']
        assert np.array_equal(T.center_crop(got, size), crop)


@pytest.mark.parametrize('udp', [False, True])
def test_topdown_crop_equals_mmpose(udp):
    from mmpose.datasets.transforms import GetBBoxCenterScale, TopdownAffine

    img = _image(160, 200, 2)
    for bbox in ([10.3, 20.7, 90.2, 150.9], [0, 0, 200, 160], [150, 5, 199, 40]):
        results = dict(img=img.copy(), bbox=np.array([bbox], np.float32), img_shape=img.shape[:2])
        results = TopdownAffine(input_size=(96, 128), use_udp=udp)(GetBBoxCenterScale(padding=1.25)(results))
        center, scale = T.bbox_center_scale(np.array(bbox, np.float32), 1.25)
        crop, fixed = T.topdown_affine(img, center, scale, (96, 128), udp)
        assert np.array_equal(crop, results['img'])
        assert np.array_equal(fixed, results['input_scale']) and np.array_equal(center, results['input_center'])


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('size', [(97, 130), (20, 24), (64, 64)])
def test_resize_bilinear_equals_torch(size, align_corners):
    x = torch.randn(5, 32, 48)
    ref = F.interpolate(x[None], size=size, mode='bilinear', align_corners=align_corners)[0]
    got = T.resize_bilinear(x.numpy(), size, align_corners)
    assert np.abs(got - ref.numpy()).max() < 1e-5


def test_normalize_equals_det_data_preprocessor():
    from mmdet.models.data_preprocessors import DetDataPreprocessor

    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    pre = DetDataPreprocessor(mean=mean, std=std, bgr_to_rgb=True, pad_size_divisor=32)
    imgs = [_image(70, 100, 3), _image(64, 90, 4)]
    ref = pre(dict(inputs=[torch.from_numpy(i.transpose(2, 0, 1).copy()) for i in imgs]), False)['inputs']
    got, shapes = T.normalize(imgs, mean, std, True, 32, 0.0)
    assert got.shape == tuple(ref.shape) == (2, 3, 96, 128) and shapes == [(70, 100), (64, 90)]
    assert np.abs(got - ref.numpy()).max() < 1e-5


def test_decode_deltas_equals_mmdet():
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    priors = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 50 + 1], 1)
    deltas = torch.randn(200, 4, generator=g) * 2  # some beyond the width/height clip
    means, stds = (0., 0., 0., 0.), (0.1, 0.1, 0.2, 0.2)
    ref = DeltaXYWHBBoxCoder(target_means=means, target_stds=stds).decode(priors, deltas, max_shape=(90, 120))
    got = B.decode_deltas(priors.numpy(), deltas.numpy(), means, stds, (90, 120))
    assert np.abs(got - ref.numpy()).max() < 1e-4


def _boxes(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 40 + 1], 1), torch.rand(n, generator=g)


@pytest.mark.parametrize('iou', [0.3, 0.5, 0.7])
def test_nms_equals_torchvision_and_mmcv(iou):
    from mmcv.ops import batched_nms, nms
    from torchvision.ops import nms as tv_nms

    boxes, scores = _boxes(300, int(iou * 10))
    got = B.nms(boxes.numpy(), scores.numpy(), iou)
    assert np.array_equal(got, tv_nms(boxes, scores, iou).numpy())
    assert np.array_equal(got, nms(boxes, scores, iou)[1].numpy())
    labels = torch.randint(0, 3, (300, ), generator=torch.Generator().manual_seed(1))
    _, keep = batched_nms(boxes, scores, labels, dict(type='nms', iou_threshold=iou))
    assert np.array_equal(B.batched_nms(boxes.numpy(), scores.numpy(), labels.numpy(), iou), keep.numpy())


def test_mask_pasting_equals_mmdet():
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    g = torch.Generator().manual_seed(2)
    probs = torch.rand(6, 1, 28, 28, generator=g)
    boxes = torch.tensor([[10.3, 5.2, 60.7, 80.1], [0, 0, 120, 90], [-5, -3, 30, 20], [100.5, 70.2, 130, 95],
                          [40, 40, 40.5, 41], [50, 20, 50, 30]])  # partly outside, tiny, zero width
    got = B.paste_masks(probs[:, 0].numpy(), boxes.numpy(), 90, 120, 0.5)
    for i in range(len(boxes)):
        chunk, (ys, xs) = _do_paste_mask(probs[i:i + 1], boxes[i:i + 1], 90, 120, skip_empty=True)
        want = np.zeros((90, 120), dtype=bool)
        want[ys, xs] = (chunk[0] >= 0.5).numpy()
        assert np.array_equal(got[i], want), i


def test_person_nms_equals_mmpose():
    from mmpose.evaluation.functional import nms

    boxes, scores = _boxes(80, 5)
    dets = np.concatenate([boxes.numpy(), scores.numpy()[:, None]], 1)
    assert np.array_equal(B.person_nms(dets, 0.3), np.array(nms(dets, 0.3)))


def _gaussian_maps(k: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:h, :w]
    maps = []
    for _ in range(k):
        cx, cy = rng.uniform(-1, w), rng.uniform(-1, h)  # some peaks on the border
        maps.append(np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 8) + rng.normal(0, 0.01, (h, w)))
    return np.stack(maps).astype(np.float32)


@pytest.mark.parametrize('codec', [
    dict(type='MSRAHeatmap', input_size=(96, 128), heatmap_size=(24, 32), sigma=2),
    dict(type='MSRAHeatmap', input_size=(96, 128), heatmap_size=(24, 32), sigma=2, unbiased=True),
    dict(type='UDPHeatmap', input_size=(96, 128), heatmap_size=(24, 32), sigma=2),
    dict(type='UDPHeatmap', input_size=(96, 128), heatmap_size=(24, 32), heatmap_type='combined'),
], ids=['msra', 'dark', 'udp', 'udp-combined'])
def test_heatmap_decoding_equals_mmpose_codecs(codec):
    from mmpose.registry import KEYPOINT_CODECS

    ref_codec = KEYPOINT_CODECS.build(dict(codec))
    recipe = dict(type=codec['type'], input_size=list(codec['input_size']), heatmap_size=list(codec['heatmap_size']),
                  unbiased=codec.get('unbiased', False), blur_kernel_size=ref_codec.blur_kernel_size,
                  heatmap_type=codec.get('heatmap_type', 'gaussian'),
                  radius_factor=getattr(ref_codec, 'radius_factor', 0.0))
    for seed in range(3):
        maps = _gaussian_maps(17, 32, 24, seed)
        if recipe['heatmap_type'] == 'combined':  # a heatmap and x/y offsets per keypoint
            offsets = np.random.default_rng(seed).normal(0, 0.3, (17, 2, 32, 24)).astype(np.float32)
            maps = np.concatenate([maps[:, None], offsets], axis=1).reshape(51, 32, 24)
        ref_kpts, ref_scores = ref_codec.decode(maps.copy())
        kpts, scores = K.decode(maps, recipe)
        assert np.abs(kpts - ref_kpts[0]).max() < 1e-4 and np.array_equal(scores, ref_scores[0])


@pytest.mark.parametrize('mode', ['heatmap', 'udp_combined'])
@pytest.mark.parametrize('shift', [False, True])
def test_flip_merge_equals_mmpose(shift, mode):
    from mmpose.models.utils.tta import flip_heatmaps

    channels = 51 if mode == 'udp_combined' else 17
    maps = torch.randn(2, channels, 8, 6)
    flipped = torch.randn(2, channels, 8, 6)
    indices = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    ref = (maps + flip_heatmaps(flipped.clone(), flip_mode=mode, flip_indices=indices, shift_heatmap=shift)) * 0.5
    got = K.merge_flipped(maps.numpy(), flipped.numpy(), indices, shift, mode)
    assert np.abs(got - ref.numpy()).max() < 1e-6


@pytest.mark.parametrize('mode,udp', [('expand', False), ('fit', False), ('expand', True)])
def test_bottomup_resize_equals_mmpose(mode, udp):
    from mmpose.datasets.transforms import BottomupResize

    transform = BottomupResize(input_size=(128, 128), size_factor=32, resize_mode=mode, use_udp=udp)
    for seed, shape in enumerate([(90, 200), (128, 128), (301, 140)]):
        img = _image(*shape, seed)
        ref = transform.transform(dict(img=img.copy(), ori_shape=shape))
        got, meta = T.bottomup_resize(img, (128, 128), 32, mode, udp)
        assert np.array_equal(got, ref['img'])
        for key in ('input_center', 'input_scale', 'input_size'):
            assert np.array_equal(meta[key], np.asarray(ref[key])), key


def _dekr_maps(seed: int, k: int = 17, h: int = 24, w: int = 20):
    """Centre and keypoint heatmaps with a few peaks, and displacements of a few pixels."""
    rng = np.random.default_rng(seed)
    heatmaps = np.concatenate([_gaussian_maps(k, h, w, seed), _gaussian_maps(1, h, w, seed + 7)])
    for _ in range(4):  # more centres
        heatmaps[-1] += _gaussian_maps(1, h, w, int(rng.integers(1000)))[0] * rng.uniform(0.2, 1)
    return heatmaps, rng.normal(0, 3, (2 * k, h, w)).astype(np.float32)


def test_dekr_flip_merge_and_spr_decoding_equal_mmpose():
    from mmpose.codecs import SPR
    from mmpose.models.utils.tta import flip_heatmaps

    from hrnet_mm_runtime import bottomup as U

    indices = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    (h1, d1), (h2, d2) = _dekr_maps(0), _dekr_maps(1)
    heatmaps, displacements = U.merge_flipped_dekr(h1[None], d1[None], h2[None], d2[None], indices, True, 80)
    back = flip_heatmaps(torch.from_numpy(h2[None]), flip_mode='heatmap', flip_indices=indices + [17],
                         shift_heatmap=True)
    ref_h = (torch.from_numpy(h1[None]) + back) / 2.0
    flipped = flip_heatmaps(torch.from_numpy(d2[None]), flip_mode='offset', flip_indices=indices, shift_heatmap=False)
    flipped[:, ::2] += (80 / 20 - 1) / (80 / 20)  # DEKRHead.predict's x correction, input 80 px wide
    ref_d = (torch.from_numpy(d1[None]) + flipped) / 2.0
    assert np.array_equal(heatmaps, ref_h.numpy()) and np.array_equal(displacements, ref_d.numpy())

    codec = SPR(input_size=(80, 96), heatmap_size=(20, 24), sigma=(4, 2), generate_keypoint_heatmaps=True,
                decode_max_instances=3)
    recipe = dict(input_size=[80, 96], heatmap_size=[20, 24], nms_kernel=5, max_instances=3, score_thr=0.01)
    ref_kpts, (ref_roots, ref_scores) = codec.decode(ref_h[0], ref_d[0])
    kpts, roots, scores = U.decode_spr(heatmaps[0], displacements[0], recipe)
    assert len(kpts) == 3
    assert np.array_equal(kpts, ref_kpts.numpy()) and np.array_equal(roots, ref_roots.numpy())
    assert np.abs(scores - ref_scores.numpy()).max() < 1e-6  # grid_sample's bilinear weights, another order


def test_dekr_rescoring_and_pose_nms_equal_mmpose():
    from mmpose.evaluation.functional import nearby_joints_nms
    from mmpose.models.heads.hybrid_heads.dekr_head import RescoreNet

    from hrnet_mm.deploy.recipe import _array
    from hrnet_mm_runtime import bottomup as U

    torch.manual_seed(0)
    net = RescoreNet(in_channels=74, norm_indexes=(5, 6)).eval()
    skeleton = [[15, 13], [13, 11], [16, 14], [14, 12], [11, 12], [5, 11], [6, 12], [5, 6], [5, 7], [6, 8], [7, 9],
                [8, 10], [1, 2], [0, 1], [0, 2], [1, 3], [2, 4], [3, 5], [4, 6]]
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 200, (6, 17, 2))
    keypoints = np.concatenate([base, base + rng.normal(0, 2, base.shape), base[:3] + 40]).astype(np.float32)
    scores = rng.uniform(0, 1, (15, 17)).astype(np.float32)
    ours = U.RescoreNet(dict(norm_indexes=[5, 6], layers=[dict(weight=_array(layer.weight), bias=_array(layer.bias))
                                                          for layer in (net.l1, net.l2, net.l3)]))
    with torch.no_grad():
        ref = net(torch.from_numpy(keypoints), torch.from_numpy(scores), skeleton).numpy()
    assert np.abs(ours(keypoints, scores, skeleton) - ref).max() < 1e-5 * np.abs(ref).max()
    for max_dets in (30, 4):
        db = [dict(keypoints=k, score=s) for k, s in zip(keypoints, scores)]
        want = nearby_joints_nms(db, 0.05, None, score_per_joint=True, max_dets=max_dets)
        assert U.nearby_joints_nms(keypoints, scores, 0.05, None, max_dets) == [int(i) for i in want]
        assert len(want) == min(max_dets, 9)  # the 6 noisy copies are dropped


def test_mask_rle_equals_pycocotools():
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((4, 3), bool), rng.random((37, 23)) < 0.5, rng.random((1, 40)) < 0.9]
    block = np.zeros((300, 200), bool)
    block[40:260, 30:170] = True  # a first run of 9040 zeros: three 5-bit groups
    for mask in masks + [block]:
        want = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        got = B.mask_to_rle(mask)
        assert got == dict(size=[int(v) for v in want['size']], counts=want['counts'].decode())
