"""Whole-model export (hrnet_mm.deploy.whole) and the PyTorch-free runtime (hrnet_mm_runtime) against the task
libraries' own inferencers: the demo configs with seeded random weights, exported, run by onnxruntime through
the runtime, give the results the libraries give on the same images."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT, randomize_

import hrnet_mm_runtime as rt
from hrnet_mm.apis import get_inferencer, get_model
from hrnet_mm.deploy.graphs import UnsupportedModelError
from hrnet_mm.deploy.whole import DEFORM_TOLERANCE, export_model, read_recipe

DEMO = os.path.join(ROOT, 'configs', 'demo')
DET = os.path.join(DEMO, 'faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-people.py')
POSE = os.path.join(DEMO, 'td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py')
FCN = os.path.join(DEMO, 'fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py')
OCR = os.path.join(DEMO, 'ocrnet_hrnetv2-tiny_1xb4-300it_demo-cityscapes.py')
CLS = os.path.join(DEMO, 'hrnet-tiny_1xb8-6e_demo-imagenet.py')
MASK = os.path.join(DEMO, 'mask-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py')
DEKR = os.path.join(DEMO, 'dekr_hrnet-tiny_1xb4-15e_demo-coco-128x128.py')
CLI = os.path.join(ROOT, 'tools', 'deploy', 'export_onnx.py')


@pytest.fixture(autouse=True)
def _restore_default_scope():
    """mmpose's ``inference_topdown`` and the inferencers' calls set mmengine's default scope for the process."""
    from hrnet_mm.apis.models import keep_default_scope

    with keep_default_scope():
        yield


def _load_tool(name: str):
    """A script of tools/ imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f'hrnet_mm_tool_{name[:-3]}', os.path.join(ROOT, 'tools', name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random picture with a few bright blobs (random weights see structure, not noise)."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(4):
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(5, 30)),
                   tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    return img


def _export(config: str, tmp_path, shape, seed: int = 0, **kwargs):
    """Random-weight model of ``config`` saved as a checkpoint and exported; returns (checkpoint, onnx path)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = randomize_(get_model(config, pretrained=False), seed=seed).eval()
    if config in (DET, MASK):  # moderate logits and deltas: saturated scores would tie, and ties make NMS arbitrary
        head = model.roi_head.bbox_head
        with torch.no_grad():
            for conv in (model.rpn_head.rpn_cls, model.rpn_head.rpn_reg, head.fc_cls, head.fc_reg):
                conv.weight.mul_(0.03)
                conv.bias.zero_()
    ckpt = str(tmp_path / 'model.pth')
    meta = getattr(model, 'dataset_meta', None)
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': meta} if meta else {}}, ckpt)
    path = str(tmp_path / 'model.onnx')
    export_model(model, model.cfg, path, shape, exporter='torchscript', config_name=os.path.basename(config),
                 **kwargs)
    return ckpt, path


def test_classifier_equals_mmpretrain(tmp_path):
    ckpt, path = _export(CLS, tmp_path, (1, 3, 64, 64))
    classifier = rt.load(path)
    assert isinstance(classifier, rt.Classifier) and read_recipe(path)['task'] == 'classification'
    inferencer = get_inferencer(CLS, ckpt)
    for seed in range(3):
        img = _scene(64, 64, seed)
        (sample, ) = inferencer.forward(next(iter(inferencer.preprocess([img]))))
        got = classifier(img)
        assert np.abs(got['scores'] - sample.pred_score.numpy()).max() < 1e-5
        assert got['label'] == int(sample.pred_label)


@pytest.mark.parametrize('config', [FCN, OCR], ids=['fcn', 'ocr'])
def test_segmentor_equals_mmseg(tmp_path, config):
    ckpt, path = _export(config, tmp_path, (1, 3, 80, 160), check_shapes=[(2, 3, 97, 130)])
    segmentor = rt.load(path)
    inferencer = get_inferencer(config, ckpt)
    for seed, (h, w) in enumerate([(90, 200), (120, 120), (77, 161)]):
        img = _scene(h, w, seed)
        sample = inferencer(img, return_datasamples=True, out_dir='')
        ref = sample.pred_sem_seg.data[0].numpy()
        got = segmentor(img)
        assert got.shape == ref.shape == (h, w)
        # argmax near ties may flip a pixel between two float implementations; none did in practice
        assert (got == ref).mean() > 0.999, (got != ref).sum()


def test_sliding_window_segmentor_equals_mmseg(tmp_path):
    config = tmp_path / 'fcn_slide.py'
    config.write_text(f"_base_ = {FCN!r}\nmodel = dict(test_cfg=dict(mode='slide', crop_size=(64, 64), "
                      f"stride=(40, 48)))\n")
    ckpt, path = _export(str(config), tmp_path, (1, 3, 64, 64))
    segmentor = rt.load(path)
    assert segmentor.recipe['segmentation']['crop_size'] == [64, 64]
    inferencer = get_inferencer(str(config), ckpt)
    for seed, (h, w) in enumerate([(90, 200), (120, 120)]):  # resized to 72x160 and 80x80: 2x3 and 2x1 windows
        img = _scene(h, w, seed)
        ref = inferencer(img, return_datasamples=True, out_dir='').pred_sem_seg.data[0].numpy()
        got = segmentor(img)
        assert got.shape == ref.shape == (h, w) and (got == ref).mean() > 0.999, (got != ref).sum()


def test_pose_equals_mmpose_on_given_boxes(tmp_path):
    ckpt, path = _export(POSE, tmp_path, (1, 3, 128, 96))
    pose = rt.load(path)
    recipe = pose.recipe['pose']
    assert recipe['flip_test'] and recipe['shift_heatmap'] and len(recipe['flip_indices']) == 17
    from mmpose.apis import inference_topdown

    img = _scene(160, 200, 3)
    boxes = np.array([[10, 20, 90, 150], [100, 5, 190, 140], [0, 0, 200, 160]], np.float32)
    samples = inference_topdown(get_model(POSE, ckpt), img, boxes)
    got = pose(img, boxes)
    ref = np.concatenate([s.pred_instances.keypoints for s in samples])
    assert got['keypoints'].shape == ref.shape == (3, 17, 2)
    assert np.abs(got['keypoints'] - ref).max() < 1e-3
    ref_scores = np.concatenate([s.pred_instances.keypoint_scores for s in samples])
    assert np.abs(got['keypoint_scores'] - ref_scores).max() < 1e-5 * np.abs(ref_scores).max()  # heatmap maxima


@pytest.fixture(scope='module')
def detector_export(tmp_path_factory):
    """The demo person detector with random weights, exported once for the module."""
    return _export(DET, tmp_path_factory.mktemp('det'), (1, 3, 160, 224), check_shapes=[(1, 3, 96, 128)])


def test_detector_equals_mmdet(detector_export):
    ckpt, path = detector_export
    detector = rt.load(path)
    recipe = detector.recipe
    assert recipe['classes'] == ['person'] and recipe['detection']['num_classes'] == 1
    inferencer = get_inferencer(DET, ckpt)
    found = 0
    for seed, (h, w) in enumerate([(160, 320), (200, 150), (120, 260)]):
        img = _scene(h, w, seed)
        (sample, ) = inferencer(img, return_datasamples=True, no_save_vis=True, no_save_pred=True)['predictions']
        ref = sample.pred_instances
        got = detector(img)
        assert len(got['bboxes']) == len(ref.bboxes)
        # onnxruntime's 5e-6 relative error on boxes up to 320 px
        assert np.abs(got['bboxes'] - ref.bboxes.numpy()).max() < 1e-2
        assert np.abs(got['scores'] - ref.scores.numpy()).max() < 1e-4
        assert np.array_equal(got['labels'], ref.labels.numpy())
        found += len(ref.bboxes)
    assert found > 0


def test_mask_rcnn_equals_mmdet(tmp_path):
    ckpt, path = _export(MASK, tmp_path, (1, 3, 128, 160))
    detector = rt.load(path)
    assert detector.recipe['detection']['masks'] == dict(threshold=0.5)
    inferencer = get_inferencer(MASK, ckpt)
    for seed, (h, w) in enumerate([(128, 160), (200, 150), (97, 203)]):
        img = _scene(h, w, seed)
        (sample, ) = inferencer(img, return_datasamples=True, no_save_vis=True, no_save_pred=True)['predictions']
        ref = sample.pred_instances
        got = detector(img)
        assert len(got['bboxes']) == len(ref.bboxes) > 0 and got['masks'].shape == (len(ref.bboxes), h, w)
        # pairs by coordinates: two detections of near-equal scores may come in either order
        dist = np.abs(got['bboxes'][:, None] - ref.bboxes.numpy()[None]).max(-1)
        match = dist.argmin(1)
        assert dist.min(1).max() < 1e-2 and len(set(match)) == len(match)
        assert np.array_equal(got['labels'], ref.labels.numpy()[match])
        assert np.abs(got['scores'] - ref.scores.numpy()[match]).max() < 1e-4
        # mask probabilities within onnxruntime's error of the 0.5 threshold may land on either side
        assert (got['masks'] == ref.masks.numpy()[match]).mean() > 0.999
    # --pred-out of both command lines: the masks as COCO run-length encoding, decoded by pycocotools
    from pycocotools import mask as coco_mask

    import hrnet_mm_runtime.__main__ as runtime_cli
    infer = _load_tool('infer.py')
    mine = runtime_cli.coco_results('detection', got, 1, 'x.png', 0.0)
    theirs = infer.coco_results(inferencer.pred2dict(sample), 1, 'x.png', 'mmdet')
    assert len(mine) == len(theirs) == len(got['masks'])
    for result, mask in zip(mine, got['masks']):
        assert np.array_equal(coco_mask.decode(result['segmentation']).astype(bool), mask)
    for result, mask in zip(theirs, ref.masks.numpy()):
        assert np.array_equal(coco_mask.decode(result['segmentation']).astype(bool), mask)
    json.dumps(mine + theirs)  # plain JSON types


FCOS_TINY = '''
_base_ = {base!r}
arch = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ), num_channels=(16, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=(8, 16)),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=(8, 16, 32)),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1), num_channels=(8, 16, 32, 64)))
model = dict(
    backbone=dict(_delete_=True, type='hrnet_mm.HRNet', arch=arch),
    neck=dict(_delete_=True, type='hrnet_mm.HRNetV2pNeck', in_channels=[8, 16, 32, 64], out_channels=32),
    bbox_head=dict(in_channels=32, feat_channels=32, stacked_convs=1, num_classes=3))
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(320, 160), keep_ratio=True),
                 dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline, metainfo=dict(classes=('a', 'b', 'c'))))
'''


def test_fcos_equals_mmdet(tmp_path):
    """The zoo's FCOS recipe (HRNetV2p, GN head) narrowed to the demo widths, at demo image sizes."""
    config = tmp_path / 'fcos_tiny.py'
    config.write_text(FCOS_TINY.format(base=os.path.join(ROOT, 'configs', 'detection',
                                                         'fcos_hrnetv2p-w18-gn-head_4xb4-1x_coco.py')))
    model = randomize_(get_model(str(config), pretrained=False), seed=0).eval()
    head = model.bbox_head
    with torch.no_grad():  # moderate logits: saturated scores would tie
        for conv in (head.conv_cls, head.conv_reg, head.conv_centerness):
            conv.weight.mul_(0.1)
            conv.bias.zero_()
    ckpt, path = str(tmp_path / 'fcos.pth'), str(tmp_path / 'fcos.onnx')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': dict(classes=('a', 'b', 'c'))}}, ckpt)
    export_model(model, model.cfg, path, (1, 3, 160, 224), check_shapes=[(2, 3, 96, 128)], exporter='torchscript')
    detector = rt.load(path)
    assert detector.recipe['classes'] == ['a', 'b', 'c'] and detector.recipe['detection']['dense']['nms_pre'] == 1000
    inferencer = get_inferencer(str(config), ckpt)
    for seed, (h, w) in enumerate([(160, 320), (200, 150), (97, 203)]):
        img = _scene(h, w, seed)
        (sample, ) = inferencer(img, return_datasamples=True, no_save_vis=True, no_save_pred=True)['predictions']
        ref = sample.pred_instances
        got = detector(img)
        assert len(got['bboxes']) == len(ref.bboxes) > 0
        assert np.abs(got['bboxes'] - ref.bboxes.numpy()).max() < 1e-2
        assert np.abs(got['scores'] - ref.scores.numpy()).max() < 1e-5
        assert np.array_equal(got['labels'], ref.labels.numpy())


def _narrow_cascade(name: str, tmp_path) -> str:
    """The zoo's (Cascade Mask) R-CNN config ``name`` at the demo widths and image size, written as a file."""
    from mmengine.config import Config

    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'detection', name))
    demo = Config.fromfile(DET)
    model = cfg.model
    model.backbone, model.neck = demo.model.backbone, demo.model.neck
    model.rpn_head.update(in_channels=32, feat_channels=32)
    roi = model.roi_head
    roi.bbox_roi_extractor.out_channels = 32
    for head in roi.bbox_head:
        head.update(in_channels=32, fc_out_channels=64, num_classes=2)
    if 'mask_head' in roi:
        roi.mask_roi_extractor.out_channels = 32
        for head in roi.mask_head if isinstance(roi.mask_head, list) else [roi.mask_head]:
            head.update(in_channels=32, conv_out_channels=32, num_classes=2)
    if 'semantic_head' in roi:  # HTC
        roi.semantic_roi_extractor.out_channels = 32
        roi.semantic_head.update(in_channels=32, conv_out_channels=32)
    cfg.test_dataloader.dataset.pipeline = [
        dict(type='LoadImageFromFile'), dict(type='Resize', scale=(320, 160), keep_ratio=True),
        dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
    cfg.test_dataloader.dataset.metainfo = dict(classes=('square', 'disc'))
    path = str(tmp_path / name)
    cfg.dump(path)
    return path


@pytest.mark.parametrize('name', [
    'cascade-rcnn_hrnetv2p-w18-20e_coco.py', 'cascade-mask-rcnn_hrnetv2p-w18_20e_coco.py',
    'htc_hrnetv2p-w18_20e_coco.py'], ids=['cascade', 'cascade-mask', 'htc'])
def test_cascade_equals_mmdet(tmp_path, name):
    config = _narrow_cascade(name, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = randomize_(get_model(config, pretrained=False), seed=0).eval()
    with torch.no_grad():  # moderate logits and deltas: saturated scores would tie
        convs = [model.rpn_head.rpn_cls, model.rpn_head.rpn_reg]
        for head in model.roi_head.bbox_head:
            convs += [head.fc_cls, head.fc_reg]
        for conv in convs:
            conv.weight.mul_(0.03)
            conv.bias.zero_()
    ckpt, path = str(tmp_path / 'model.pth'), str(tmp_path / 'model.onnx')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': dict(classes=('square', 'disc'))}}, ckpt)
    # The random-weight mask branches reach 1.2e-4 to 1.4e-4 relative error in the check (their logits are large)
    export_model(model, model.cfg, path, (1, 3, 160, 224), exporter='torchscript',
                 tolerance=1e-4 if name.startswith('cascade-rcnn') else 1e-3)
    detector = rt.load(path)
    inferencer = get_inferencer(config, ckpt)
    for seed, (h, w) in enumerate([(160, 320), (97, 203)]):
        img = _scene(h, w, seed)
        (sample, ) = inferencer(img, return_datasamples=True, no_save_vis=True, no_save_pred=True)['predictions']
        ref = sample.pred_instances
        got = detector(img)
        assert len(got['bboxes']) == len(ref.bboxes) > 0
        dist = np.abs(got['bboxes'][:, None] - ref.bboxes.numpy()[None]).max(-1)
        match = dist.argmin(1)
        # pixels of a 320-wide image: HTC's three stages, each fed the last one's boxes, reach 0.0103 px with
        # onnxruntime's AVX2 kernels (0.01 px is enough with AVX-512)
        assert dist.min(1).max() < 2e-2 and len(set(match)) == len(match)
        assert np.array_equal(got['labels'], ref.labels.numpy()[match])
        assert np.abs(got['scores'] - ref.scores.numpy()[match]).max() < 1e-4
        if 'masks' in ref:
            assert (got['masks'] == ref.masks.numpy()[match]).mean() > 0.999


def test_top_down_pipeline_matches_mmpose_with_detector(tmp_path, detector_export):
    det_ckpt, det_path = detector_export
    pose_ckpt, pose_path = _export(POSE, tmp_path, (1, 3, 128, 96), seed=1)
    pipeline = rt.TopDownPose(rt.load(det_path), rt.load(pose_path), bbox_thr=0.3)
    inferencer = get_inferencer(POSE, pose_ckpt, det_model=DET, det_weights=det_ckpt, det_cat_ids=[0])
    img = _scene(160, 320, 7)
    results = next(inferencer(img, bbox_thr=0.3, show=False))['predictions'][0]
    got = pipeline(img)
    ref = np.array([r['keypoints'] for r in results])
    assert got['keypoints'].shape == ref.shape and len(ref) > 0
    # The crops follow boxes equal to 1e-4 px. mmpose's decoding moves each maximum a quarter heatmap pixel towards
    # the higher neighbour; where the neighbours tie to within onnxruntime's error (frequent with random weights)
    # the direction may differ, by about a crop pixel.
    close = np.abs(got['keypoints'] - ref).max(-1) < 1e-2
    assert close.mean() > 0.95, close.mean()


def test_runtime_imports_without_torch(tmp_path):
    _, path = _export(CLS, tmp_path, (1, 3, 64, 64))
    code = ('import sys; sys.modules["torch"] = None; sys.modules["mmengine"] = None\n'
            'import numpy as np, hrnet_mm_runtime as rt\n'
            f'out = rt.load({path!r})(np.zeros((64, 64, 3), np.uint8))\n'
            'assert "torch" not in [m.split(".")[0] for m, v in sys.modules.items() if v is not None]\n'
            'print(len(out["scores"]))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '4'


def test_runtime_rejects_bad_files_and_images(tmp_path):
    (tmp_path / 'page.onnx').write_text('<html>not found</html>')
    with pytest.raises(rt.RuntimeModelError, match='cannot open'):
        rt.load(str(tmp_path / 'page.onnx'))
    _, path = _export(CLS, tmp_path, (1, 3, 64, 64))
    with pytest.raises(rt.RuntimeModelError, match='is a classification model, not detection'):
        rt.Detector(path)
    with pytest.raises(rt.RuntimeModelError, match=r'expected an \(H, W, 3\) uint8 BGR image'):
        rt.load(path)(np.zeros((64, 64), np.float32))


RTMCC = """_base_ = {pose!r}
model = dict(head=dict(_delete_=True, type='RTMCCHead', in_channels=16, out_channels=17, input_size=(96, 128),
                       in_featuremap_size=(24, 32), simcc_split_ratio=2.0, final_layer_kernel_size=1,
                       gau_cfg=dict(hidden_dims=32, s=16, expansion_factor=2, dropout_rate=0., drop_path=0.,
                                    act_fn='SiLU', use_rel_bias=False, pos_enc=False),
                       decoder=dict(type='SimCCLabel', input_size=(96, 128), sigma=(4.9, 5.66),
                                    simcc_split_ratio=2.0)))
""".format(pose=POSE)


def test_unsupported_models_are_refused(tmp_path):
    """Every zoo entry exports whole; a head without a graph (here SimCC) is refused in one message."""
    config = tmp_path / 'rtmcc.py'
    config.write_text(RTMCC)
    model = get_model(str(config), pretrained=False)
    with pytest.raises(UnsupportedModelError, match='pose export supports top-down HeatmapHead models, got RTMCCHead'):
        export_model(model, model.cfg, str(tmp_path / 'x.onnx'), (1, 3, 128, 96))
    assert os.listdir(tmp_path) == ['rtmcc.py']


def _bottom_up_export(tmp_path, name: str, config_text: str, last_layers, scale: float, check_shape):
    """A bottom-up model of ``config_text`` with random weights and its ``last_layers(model)`` scaled by ``scale``
    (biases zeroed: output ranges like a trained model's), saved as a checkpoint and exported at 128x128 with the
    TorchScript exporter; returns (config path, checkpoint, ONNX path, export report)."""
    config = tmp_path / f'{name}.py'
    config.write_text(config_text)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = randomize_(get_model(str(config), pretrained=False), seed=0).eval()
    with torch.no_grad():
        for conv in last_layers(model):
            conv.weight.mul_(scale)
            conv.bias.zero_()
    ckpt = str(tmp_path / 'model.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': model.dataset_meta}}, ckpt)
    path = str(tmp_path / 'model.onnx')
    report = export_model(model, model.cfg, path, (1, 3, 128, 128), exporter='torchscript',
                          check_shapes=[check_shape])
    return str(config), ckpt, path, report


def test_bottom_up_dekr_equals_mmpose(tmp_path):
    """DEKR with the flip test and the rescoring net (mmpose's zoo recipes have both): the deformable
    convolutions export as ONNX DeformConv; the runtime's people equal ``inference_bottomup``'s."""
    text = (f"_base_ = {DEKR!r}\nmodel = dict(head=dict(rescore_cfg=dict(_delete_=True, in_channels=74, "
            f"norm_indexes=(5, 6))), test_cfg=dict(flip_test=True))\n")
    # realistic output ranges: heatmaps near 1, displacements of a few pixels, OKS near 1
    config, ckpt, path, report = _bottom_up_export(
        tmp_path, 'dekr', text, lambda m: (m.head.heatmap_conv_layers[-1], m.head.displacement_conv_layers[-1],
                                           m.head.rescore_net.l3), 0.01, (2, 3, 96, 160))
    # the deformable convolutions' outputs get the looser default (DEFORM_TOLERANCE says why)
    assert report.opset == 19 and report.tolerance == DEFORM_TOLERANCE
    assert max(report.errors.values()) < DEFORM_TOLERANCE
    import onnx

    assert 'DeformConv' in {node.op_type for node in onnx.load(path).graph.node}
    pose = rt.load(path)
    assert isinstance(pose, rt.BottomupPoseEstimator) and pose.recipe['pose']['rescore'] is not None
    from mmengine.registry import init_default_scope
    from mmpose.apis import inference_bottomup

    reference = get_model(config, ckpt)
    init_default_scope('mmpose')  # inference_bottomup builds the pipeline in the current scope
    people = 0
    for seed, (h, w) in enumerate([(90, 200), (128, 128), (200, 130)]):
        img = _scene(h, w, seed)
        (sample, ) = inference_bottomup(reference, img)
        want = sample.pred_instances
        got = pose(img)
        assert got['keypoints'].shape == want.keypoints.shape
        assert np.abs(got['keypoints'] - want.keypoints).max() < 1e-3
        assert np.abs(got['keypoint_scores'] - want.keypoint_scores).max() < 1e-4 * np.abs(want.keypoint_scores).max()
        people += len(want.keypoints)
    assert people >= 3
    cv2.imwrite(str(tmp_path / 'scene.png'), img)
    proc = _runtime_cli(tmp_path, path, 'scene.png', '--out-dir', 'vis', '--pred-out', 'people.json')
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / 'people.json') as f:
        results = json.load(f)
    assert len(results) == len(got['keypoints']) and os.path.exists(tmp_path / 'vis' / 'scene.png')
    got_kpts = np.array([r['keypoints'] for r in results]).reshape(len(results), -1, 3)[..., :2]
    assert np.abs(got_kpts - got['keypoints']).max() <= 1e-3


# A narrow HRNet (all four branches) and mmpose's bottom-up test pipeline at 128 px, for the zoo's bottom-up recipes
BOTTOM_UP_TINY = """channels = [16, 32, 64, 128]
extra = dict(
    stage1=dict(num_modules=1, num_branches=1, block='BOTTLENECK', num_blocks=(1, ), num_channels=(16, )),
    stage2=dict(num_modules=1, num_branches=2, block='BASIC', num_blocks=(1, 1), num_channels=channels[:2]),
    stage3=dict(num_modules=1, num_branches=3, block='BASIC', num_blocks=(1, 1, 1), num_channels=channels[:3]),
    stage4=dict(num_modules=1, num_branches=4, block='BASIC', num_blocks=(1, 1, 1, 1), num_channels=channels))
test_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImage'),
    dict(type='BottomupResize', input_size=(128, 128), size_factor=64, resize_mode='expand'),
    dict(type='PackPoseInputs', meta_keys=('id', 'img_id', 'img_path', 'ori_shape', 'img_shape', 'input_size',
                                           'input_center', 'input_scale', 'flip_indices', 'skeleton_links'))]))
"""
CID_TINY = """_base_ = 'hrnet_mm::pose/cid_hrnet-w32_8xb20-140e_coco-512x512.py'
""" + BOTTOM_UP_TINY + """
codec = dict(type='DecoupledHeatmap', input_size=(128, 128), heatmap_size=(32, 32))
model = dict(backbone=dict(extra=extra, init_cfg=None), neck=dict(in_channels=channels),
             head=dict(in_channels=sum(channels), gfd_channels=8, decoder=codec))
"""


def test_bottom_up_cid_equals_mmpose(tmp_path):
    """CID (mmpose's zoo recipe, narrowed) with its flip test: the centre selection and the per-person
    decoupling run in the graph; the runtime's people equal ``inference_bottomup``'s, including a wide image
    whose heatmap selects the 5-pixel peak window."""
    # unsaturated sigmoid maps: a plateau at the clamp would make every argmax a tie
    config, ckpt, path, report = _bottom_up_export(
        tmp_path, 'cid', CID_TINY, lambda m: (m.head.iia_module.keypoint_root_conv, m.head.gfd_module.heatmap_conv),
        0.001, (1, 3, 64, 1280))
    assert max(report.errors.values()) < 1e-4
    pose = rt.load(path)
    assert isinstance(pose, rt.BottomupPoseEstimator) and pose.recipe['pose']['codec']['type'] == 'DecoupledHeatmap'
    from mmengine.registry import init_default_scope
    from mmpose.apis import inference_bottomup

    reference = get_model(config, ckpt)
    init_default_scope('mmpose')
    for seed, (h, w) in enumerate([(90, 200), (150, 100), (100, 1300)]):  # the last: 32x416 heatmaps
        img = _scene(h, w, seed)
        (sample, ) = inference_bottomup(reference, img)
        want = sample.pred_instances
        got = pose(img)
        assert got['keypoints'].shape == want.keypoints.shape and len(want.keypoints) > 0
        # each maximum moves a quarter heatmap pixel towards its higher neighbour; where both neighbours are
        # equal within rounding, the direction may differ (half a heatmap pixel, 1.6 image pixels here)
        error = np.abs(got['keypoints'] - want.keypoints).max(axis=-1)
        assert (error < 1e-3).mean() > 0.99 and error.max() < 2.0, error.max()
        assert np.abs(got['keypoint_scores'] - want.keypoint_scores).max() < 1e-5


AE_TINY = """_base_ = 'hrnet_mm::pose/ae_hrnet-w32_8xb24-300e_coco-512x512.py'
""" + BOTTOM_UP_TINY + """
codec = dict(type='AssociativeEmbedding', input_size=(128, 128), heatmap_size=(32, 32), sigma=2, decode_topk=30,
             decode_keypoint_order=[0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16],
             decode_center_shift=0.5, decode_max_instances=30)
model = dict(backbone=dict(extra=extra, init_cfg=None),
             head=dict(in_channels=16, decoder=dict(codec, heatmap_size=(128, 128))))
"""


def test_bottom_up_associative_embedding_equals_mmpose(tmp_path):
    """Associative embedding (mmpose's zoo recipe, narrowed) with its flip test and heatmaps restored to the
    input size in the graph; the runtime groups the keypoints by their tags as mmpose does."""
    # heatmaps below 1 and tags of a few units, as trained ones
    config, ckpt, path, report = _bottom_up_export(tmp_path, 'ae', AE_TINY, lambda m: (m.head.final_layer, ), 0.01,
                                                   (1, 3, 64, 192))
    assert max(report.errors.values()) < 1e-4
    pose = rt.load(path)
    assert pose.recipe['pose']['codec']['type'] == 'AssociativeEmbedding'
    from mmengine.registry import init_default_scope
    from mmpose.apis import inference_bottomup

    reference = get_model(config, ckpt)
    init_default_scope('mmpose')
    for seed, (h, w) in enumerate([(90, 200), (150, 100)]):
        img = _scene(h, w, seed)
        (sample, ) = inference_bottomup(reference, img)
        want = sample.pred_instances
        got = pose(img)
        assert got['keypoints'].shape == want.keypoints.shape and len(want.keypoints) > 0
        assert np.abs(got['keypoint_scores'] - want.keypoint_scores).max() < 1e-5
        assert np.abs(got['bbox_scores'] - want.bbox_scores).max() < 1e-5
        # The upsampled heatmaps have plateaus (rows clamped at the border): candidates of exactly equal score in
        # neighbouring pixels. mmpose's top-k takes them in the order of the C++ library's partial sort, the
        # runtime lowest pixel index first, so a few keypoints land one input pixel apart (measured 2-5%).
        error = np.abs(got['keypoints'] - want.keypoints).max(axis=-1)
        assert (error < 1e-3).mean() > 0.9 and error.max() < 2.0, ((error >= 1e-3).mean(), error.max())


def _cli(cwd, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]), OMP_NUM_THREADS='2')
    return subprocess.run([sys.executable, CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli_exports_the_whole_model(tmp_path):
    ckpt, _ = _export(POSE, tmp_path, (1, 3, 128, 96), check=False)
    proc = _cli(tmp_path, POSE, ckpt, '--out', 'pose.onnx', '--check-sizes', '64x48')
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if not line.startswith('Loads checkpoint')]
    assert [line.split(':')[0] for line in lines] == ['model', 'fold BN', 'export', 'check', 'check 1x3x128x96',
                                                      'check 2x3x64x48', 'done']
    assert 'TopdownPoseEstimator' in lines[0] and 'heatmaps 1x17x32x24' in lines[-1]
    recipe = read_recipe(str(tmp_path / 'pose.onnx'))
    assert recipe['preprocess']['steps'][-1] == dict(type='topdown_affine', input_size=[96, 128], udp=False)
    assert json.loads(json.dumps(recipe)) == recipe


@pytest.mark.parametrize('args,message', [
    (['no-such-model', '--out', 'm.onnx'], 'no-such-model'),
    (['missing.py', '--out', 'm.onnx'], 'config file not found: missing.py'),
    (['rtmcc.py', '--out', 'm.onnx'], 'pose export supports top-down HeatmapHead models, got RTMCCHead'),
    ([DET, '--out', 'm.onnx', '--batch', '2'], 'a detector graph takes one image'),
    ([POSE, '--out', 'm.onnx', '--static'], 'always dynamic'),
    ([POSE, 'bad.pth', '--out', 'm.onnx'], 'bad.pth'),
])
def test_cli_model_errors_are_one_line(tmp_path, args, message):
    (tmp_path / 'bad.pth').write_text('<html>not a checkpoint</html>')
    (tmp_path / 'rtmcc.py').write_text(RTMCC)
    proc = _cli(tmp_path, *args)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith('export_onnx.py: error: ') and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'm.onnx').exists() and not (tmp_path / 'm.onnx.part').exists()


def _runtime_cli(cwd, *args):
    return subprocess.run([sys.executable, '-m', 'hrnet_mm_runtime', *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))


def test_runtime_cli_writes_pictures_and_coco_results(tmp_path, detector_export):
    _, det_path = detector_export
    _, pose_path = _export(POSE, tmp_path, (1, 3, 128, 96), seed=1)
    (tmp_path / 'images').mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / 'images' / f'{i}.jpg'), _scene(160, 320, 10 + i))
    writer = cv2.VideoWriter(str(tmp_path / 'clip.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 10, (320, 160))
    for i in range(4):
        writer.write(_scene(160, 320, 20 + i))
    writer.release()
    proc = _runtime_cli(tmp_path, pose_path, 'images', 'clip.mp4', '--det-model', det_path, '--out-dir', 'vis',
                        '--pred-out', 'people.json')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['vis/0.png', 'vis/1.png', 'vis/clip.mp4', 'people.json']
    assert '6 frame(s)' in proc.stderr
    with open(tmp_path / 'people.json') as f:
        results = json.load(f)
    pipeline = rt.TopDownPose(rt.load(det_path), rt.load(pose_path))
    want = pipeline(cv2.imread(str(tmp_path / 'images' / '0.jpg')))
    first = [r for r in results if r['image_id'] == 1]
    assert len(first) == len(want['keypoints']) > 0 and {r['category_id'] for r in results} == {1}
    got = np.array([r['keypoints'] for r in first]).reshape(len(first), -1, 3)
    assert np.abs(got[..., :2] - want['keypoints']).max() <= 1e-3
    assert cv2.imread(str(tmp_path / 'vis' / '0.png')).shape == (160, 320, 3)
    # the video: one annotated frame per frame, named PATH#INDEX in the results
    assert {r['file_name'] for r in results if r['image_id'] > 2} <= {f'clip.mp4#{i}' for i in range(4)}
    video = cv2.VideoCapture(str(tmp_path / 'vis' / 'clip.mp4'))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 4 and video.read()[1].shape == (160, 320, 3)
    video.release()


@pytest.mark.parametrize('args,message', [
    (['DET', 'missing.jpg'], 'image or video file or folder not found: missing.jpg'),
    (['DET', 'clip.mp4'], 'cannot open video clip.mp4: OpenCV has no decoder for it'),
    (['DET', 'page.jpg'], 'cannot read image page.jpg'),
    (['page.jpg', 'page.jpg'], 'cannot open page.jpg with onnxruntime'),
    (['DET', 'page.jpg', '--det-model', 'DET'], '--det-model is for top-down pose models'),
    (['DET', 'page.jpg', '--bbox-thr', 'x'], "argument --bbox-thr: invalid float value: 'x'"),
])
def test_runtime_cli_errors_are_one_line(tmp_path, detector_export, args, message):
    (tmp_path / 'page.jpg').write_text('<html>not found</html>')
    (tmp_path / 'clip.mp4').write_text('<html>not found</html>')
    args = [detector_export[1] if a == 'DET' else a for a in args]
    proc = _runtime_cli(tmp_path, *args, '--out-dir', 'vis', '--pred-out', 'out.json')
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith('hrnet_mm_runtime: error: ') and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / 'out.json').exists()


# --------------------------------------------------------------------------------------------- int8 files


def _quantized_convs(path: str) -> int:
    """How many convolutions of an ONNX file take int8 weights per output channel (DequantizeLinear of an int8
    initializer with one scale per output channel)."""
    import onnx

    graph = onnx.load(path).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    count = 0
    for conv in (n for n in graph.node if n.op_type == 'Conv'):
        weight = producer.get(conv.input[1])
        if weight is not None and weight.op_type == 'DequantizeLinear':
            w, scale = inits[weight.input[0]], inits[weight.input[1]]
            count += w.dtype == np.int8 and scale.shape == (w.shape[0], )
    return count


def test_cli_exports_the_int8_model(tmp_path):
    """--int8: calibrated on the config's training images, the int8 (QDQ) file keeps the recipe, quantizes every
    convolution, and the runtime's heatmaps stay near the float32 file's (a broken graph is off by their range)."""
    from hrnet_mm.datasets import make_coco_keypoints

    make_coco_keypoints(str(tmp_path / 'data' / 'demo' / 'coco_keypoints'), {'train': 3, 'val': 1})
    ckpt, fp32_path = _export(POSE, tmp_path, (1, 3, 128, 96), check=False)
    proc = _cli(tmp_path, POSE, ckpt, '--out', 'pose-int8.onnx', '--int8', '--calibration-images', '3')
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if not line.startswith('Loads checkpoint')]
    assert [line.split(':')[0] for line in lines] == ['model', 'calibration', 'fold BN', 'export', 'check',
                                                      'check 1x3x128x96', 'int8', 'int8 check', 'done']
    assert int(lines[1].split()[1]) >= 3 and '(int8)' in lines[-1]  # one sample per person: 3 or more
    path = str(tmp_path / 'pose-int8.onnx')
    assert read_recipe(path) == read_recipe(fp32_path)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in get_model(POSE, pretrained=False).modules())
    assert _quantized_convs(path) == convs > 0
    assert sorted(os.listdir(tmp_path)) == sorted(['data', 'model.pth', 'model.onnx', 'pose-int8.onnx'])
    boxes = np.array([[10, 20, 90, 150]], np.float32)
    img = _scene(160, 200, 3)
    fp32, int8 = rt.load(fp32_path), rt.load(path)
    from hrnet_mm_runtime import transforms

    pre = fp32.recipe['preprocess']
    x, _ = transforms.normalize([cv2.resize(img, (96, 128))], pre['mean'], pre['std'], pre['to_rgb'])
    ref, got = fp32.heatmaps(x), int8.heatmaps(x)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.25, err
    assert int8(img, boxes)['keypoints'].shape == (1, 17, 2)


def test_int8_calibration_of_a_detector_feeds_its_image_shape(tmp_path, monkeypatch, detector_export):
    """A two-stage detector graph takes one image and its ``img_shape``: each calibration input is one training
    image as the model's data preprocessor pads it, with the shape of the image inside; the int8 file runs."""
    from hrnet_mm.datasets.__main__ import make_coco_people
    from hrnet_mm.deploy.whole import calibration_inputs, export_int8

    make_coco_people(str(tmp_path / 'data' / 'demo' / 'coco_people'), {'train': 3, 'val': 1})
    monkeypatch.chdir(tmp_path)
    ckpt, path = detector_export
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        items, seen = calibration_inputs(get_model(DET, ckpt), get_model(DET, pretrained=False).cfg, 3)
    assert seen == 3 and len(items) == 3
    for item in items:
        assert sorted(item) == ['img_shape', 'input'] and item['input'].shape[:2] == (1, 3)
        assert item['img_shape'].dtype == np.float32
        assert (item['img_shape'] <= item['input'].shape[2:]).all() and item['input'].shape[2] % 32 == 0
    lines = []
    assert export_int8(path, str(tmp_path / 'det-int8.onnx'), items, log=lines.append) is None  # boxes: no error
    assert len(lines) == 1 and lines[0].startswith('int8: ')
    assert _quantized_convs(str(tmp_path / 'det-int8.onnx')) > 0
    out = rt.load(str(tmp_path / 'det-int8.onnx'))(_scene(160, 224, 5))
    assert out['bboxes'].shape[1] == 4 and len(out['bboxes']) == len(out['scores'])


@pytest.mark.parametrize('args,message', [
    ([POSE, '--out', 'm.onnx', '--int8', '--part', 'backbone'], '--int8 exports the whole model (--part model)'),
    ([POSE, '--out', 'm.onnx', '--int8', '--calibration-images', '0'], '--calibration-images 0: must be at least 1'),
    ([POSE, '--out', 'm.onnx', '--int8'], 'cannot read the training images of'),
])
def test_cli_int8_errors_are_one_line(tmp_path, args, message):
    proc = _cli(tmp_path, *args)  # no data/demo here: the training set is missing
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith('export_onnx.py: error: ') and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'm.onnx').exists() and not (tmp_path / 'm.onnx.part').exists()
