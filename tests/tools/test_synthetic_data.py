"""The synthetic demo sets (hrnet_mm.datasets) are deterministic, follow the documented on-disk layouts and load
through the task libraries' own dataset classes (mmdet/mmpose CocoDataset, mmseg CityscapesDataset, mmpretrain
CustomDataset); the keypoint set scores AP 1 with mmpose's CocoMetric when the ground truth is the prediction."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict

import numpy as np
import pytest

from hrnet_mm.datasets import (
    CLS_CLASSES,
    COCO_KEYPOINTS,
    COCO_SKELETON,
    DET_CLASSES,
    SEG_IGNORE,
    SEG_TRAIN_IDS,
    make_cityscapes_seg,
    make_coco_detection,
    make_coco_keypoints,
    make_imagenet_folder,
)

SPLITS = {'train': 6, 'val': 3}


def _digest(root: str) -> Dict[str, str]:
    """``{relative path: sha1}`` of every file under ``root``."""
    out = {}
    for base, _, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


GENERATORS = {
    'coco': lambda root, seed=0: make_coco_detection(root, SPLITS, seed=seed),
    'coco_keypoints': lambda root, seed=0: make_coco_keypoints(root, SPLITS, seed=seed),
    'cityscapes': lambda root, seed=0: make_cityscapes_seg(root, SPLITS, seed=seed),
    'imagenet': lambda root, seed=0: make_imagenet_folder(root, {'train': 3, 'val': 2}, seed=seed),
}


@pytest.mark.parametrize('kind', sorted(GENERATORS))
def test_same_seed_same_bytes(tmp_path, kind):
    gen = GENERATORS[kind]
    gen(str(tmp_path / 'a'))
    gen(str(tmp_path / 'b'))
    gen(str(tmp_path / 'c'), seed=1)
    a, b, c = (_digest(str(tmp_path / n)) for n in 'abc')
    assert a and a == b
    assert a.keys() == c.keys() and a != c


def test_coco_keypoints_layout_and_annotations(tmp_path):
    files = make_coco_keypoints(str(tmp_path), SPLITS)
    assert sorted(files) == ['train', 'val']
    for split, count in SPLITS.items():
        assert files[split] == str(tmp_path / 'annotations' / f'person_keypoints_{split}.json')
        assert len(os.listdir(tmp_path / split)) == count
        ann = json.load(open(files[split]))
        (cat,) = ann['categories']
        assert cat['name'] == 'person' and cat['id'] == 1
        assert cat['keypoints'] == list(COCO_KEYPOINTS) and cat['skeleton'] == COCO_SKELETON
        assert len(ann['images']) == count and len(ann['annotations']) >= count
        for a in ann['annotations']:
            kp = np.array(a['keypoints'], np.float64).reshape(17, 3)
            assert set(kp[:, 2]) <= {0, 1, 2} and a['num_keypoints'] == int((kp[:, 2] > 0).sum()) >= 10
            x, y, w, h = a['bbox']
            vis = kp[kp[:, 2] > 0]
            assert (vis[:, 0] >= x).all() and (vis[:, 0] <= x + w).all()
            assert (vis[:, 1] >= y).all() and (vis[:, 1] <= y + h).all()
            assert 0 < a['area'] <= w * h and a['iscrowd'] == 0 and a['category_id'] == 1
            # facing the camera: the person's left shoulder and hip are on the image's right
            assert kp[5, 0] > kp[6, 0] and kp[11, 0] > kp[12, 0]


def test_coco_keypoints_load_with_mmpose_and_score_with_coco_metric(tmp_path):
    from mmpose.datasets import CocoDataset
    from mmpose.evaluation import CocoMetric

    files = make_coco_keypoints(str(tmp_path), SPLITS)
    ds = CocoDataset(data_root=str(tmp_path), ann_file='annotations/person_keypoints_val.json',
                     data_prefix=dict(img='val/'), data_mode='topdown', test_mode=True, pipeline=[])
    num_persons = len(json.load(open(files['val']))['annotations'])
    assert len(ds) == num_persons
    assert ds.metainfo['dataset_name'] == 'coco' and ds.metainfo['num_keypoints'] == 17
    metric = CocoMetric(ann_file=files['val'])
    metric.dataset_meta = ds.metainfo
    for i in range(len(ds)):
        info = ds[i]
        assert os.path.isfile(info['img_path'])
        assert info['keypoints'].shape == (1, 17, 2) and info['bbox'].shape == (1, 4)
        metric.process([], [dict(id=info['id'], img_id=info['img_id'],
                                 pred_instances=dict(keypoints=info['keypoints'],
                                                     keypoint_scores=np.ones((1, 17), np.float32)),
                                 gt_instances=dict(bbox_scores=info['bbox_score']))])
    result = metric.evaluate(len(ds))
    assert result['coco/AP'] == pytest.approx(1.0)


def test_coco_detection_loads_with_mmdet(tmp_path):
    from mmdet.datasets import CocoDataset

    make_coco_detection(str(tmp_path), SPLITS)
    ds = CocoDataset(data_root=str(tmp_path), ann_file='annotations/instances_train.json',
                     data_prefix=dict(img='train/'), metainfo=dict(classes=DET_CLASSES), pipeline=[])
    assert len(ds) == SPLITS['train']
    info = ds[0]
    assert os.path.isfile(info['img_path'])
    assert info['instances'] and all(inst['bbox_label'] in (0, 1) for inst in info['instances'])


def test_cityscapes_layout_and_loads_with_mmseg(tmp_path):
    from mmseg.datasets import CityscapesDataset
    from PIL import Image

    files = make_cityscapes_seg(str(tmp_path), SPLITS)
    allowed = set(SEG_TRAIN_IDS.values()) | {SEG_IGNORE}
    seen = set()
    for split, count in SPLITS.items():
        assert len(files[split]) == count
        for gt in files[split]:
            rel = os.path.relpath(gt, tmp_path / 'gtFine' / split)
            city, name = rel.split(os.sep)
            assert name.endswith('_gtFine_labelTrainIds.png')
            img = tmp_path / 'leftImg8bit' / split / city / name.replace('_gtFine_labelTrainIds', '_leftImg8bit')
            assert img.is_file()
            label = np.asarray(Image.open(gt))
            assert label.dtype == np.uint8 and label.shape == (80, 160)
            assert np.asarray(Image.open(img)).shape == (80, 160, 3)
            assert set(np.unique(label)) <= allowed
            seen |= set(np.unique(label).tolist())
        ds = CityscapesDataset(data_root=str(tmp_path), pipeline=[],
                               data_prefix=dict(img_path=f'leftImg8bit/{split}', seg_map_path=f'gtFine/{split}'))
        assert len(ds) == count
        info = ds[0]
        assert os.path.isfile(info['img_path']) and os.path.isfile(info['seg_map_path'])
        assert info['seg_map_path'].endswith('_gtFine_labelTrainIds.png')
    # the clear region classes occur in every set this size
    assert {SEG_TRAIN_IDS[k] for k in ('road', 'sidewalk', 'building', 'sky', 'car')} <= seen


def test_imagenet_folder_loads_with_mmpretrain(tmp_path):
    from mmpretrain.datasets import CustomDataset

    counts = make_imagenet_folder(str(tmp_path), {'train': 3, 'val': 2})
    assert counts == {'train': 3 * len(CLS_CLASSES), 'val': 2 * len(CLS_CLASSES)}
    assert sorted(os.listdir(tmp_path / 'train')) == sorted(CLS_CLASSES)
    assert all(f.endswith('.JPEG') for f in os.listdir(tmp_path / 'val' / CLS_CLASSES[0]))
    ds = CustomDataset(data_root=str(tmp_path), data_prefix='val/', pipeline=[])
    assert len(ds) == counts['val']
    assert tuple(ds.CLASSES) == tuple(sorted(CLS_CLASSES))
    assert sorted(ds.get_gt_labels().tolist()) == sorted(list(range(len(CLS_CLASSES))) * 2)


def test_cli_all_writes_the_demo_layout(tmp_path, capsys):
    from hrnet_mm.datasets.__main__ import main

    assert main(['all', str(tmp_path), '--train', '2', '--val', '1']) == 0
    demo = tmp_path / 'data' / 'demo'
    assert sorted(os.listdir(demo)) == ['cityscapes', 'coco', 'coco_keypoints', 'imagenet']
    assert (demo / 'coco' / 'annotations' / 'instances_train.json').is_file()
    assert (demo / 'coco_keypoints' / 'annotations' / 'person_keypoints_val.json').is_file()
    assert (demo / 'cityscapes' / 'gtFine' / 'train').is_dir()
    assert (demo / 'cityscapes' / 'leftImg8bit' / 'val').is_dir()
    assert len(os.listdir(demo / 'imagenet' / 'train')) == len(CLS_CLASSES)
    out = capsys.readouterr().out
    assert 'coco-keypoints train' in out and 'imagenet val: 4 images' in out
    assert main(['coco-keypoints', str(tmp_path / 'kp'), '--train', '1', '--val', '1']) == 0
    assert (tmp_path / 'kp' / 'annotations' / 'person_keypoints_train.json').is_file()


@pytest.mark.parametrize('kind,dataset,ann,prefix,num_keypoints', [
    ('cofw', 'COFWDataset', 'annotations/cofw_test.json', 'images/', 29),
    ('onehand10k', 'OneHand10KDataset', 'annotations/onehand10k_test.json', '', 21)])
def test_landmark_sets_load_with_mmpose(tmp_path, kind, dataset, ann, prefix, num_keypoints):
    """The face and hand sets load with mmpose's own dataset classes, keypoints inside their boxes. The landmarks
    that mmpose's flip swaps wear the same marker colour (or a flipped image would be labelled wrongly)."""
    import mmpose.datasets as mmpose_datasets
    from PIL import Image

    from hrnet_mm.datasets.__main__ import write
    write(kind, str(tmp_path), 4, 3)
    ds = getattr(mmpose_datasets, dataset)(data_root=str(tmp_path), ann_file=ann, data_prefix=dict(img=prefix),
                                           test_mode=True, pipeline=[])
    assert len(ds) == 3 and ds.metainfo['num_keypoints'] == num_keypoints
    flip = ds.metainfo['flip_indices']
    same = []
    for i in range(len(ds)):
        info = ds[i]
        kp, (x0, y0, x1, y1) = info['keypoints'][0], info['bbox'][0]
        assert kp.shape == (num_keypoints, 2)
        assert (kp[:, 0] >= x0).all() and (kp[:, 0] <= x1).all() and (kp[:, 1] >= y0).all() and (kp[:, 1] <= y1).all()
        img = np.asarray(Image.open(info['img_path']).convert('RGB')).astype(int)
        colour = [img[int(y), int(x)] for x, y in kp]
        same += [np.abs(colour[k] - colour[flip[k]]).sum() < 90 for k in range(num_keypoints) if flip[k] != k]
    assert kind == 'onehand10k' or np.mean(same) > 0.8  # a marker drawn over another now and then
