"""Models by name: ``hrnet_mm.list_models`` / ``get_model`` / ``get_inferencer`` and ``hrnet-mm list``.

A private model index (``HRNET_MM_MODEL_INDEX``) names demo configs whose weights a local ``http.server``
serves, since the real entries cannot be downloaded offline; the real table is checked for its names and
configs. The models come from the task libraries' own ``init`` functions and inferencers, so what is checked here
is the name lookup, the download, the strict weight check and the one-line errors.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT

import hrnet_mm
from hrnet_mm.apis import ModelNotFoundError
from hrnet_mm.models.checkpoint import CheckpointFileError, CheckpointMismatchError

DEMO = os.path.join(ROOT, 'configs', 'demo')
CLS = 'configs/demo/hrnet-tiny_1xb8-6e_demo-imagenet.py'
DET = 'configs/demo/faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco.py'
POSE = 'configs/demo/td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96.py'
BOTTOM_UP = 'configs/demo/dekr_hrnet-tiny_1xb4-15e_demo-coco-128x128.py'


def _weights(config: str, seed: int) -> bytes:
    torch.manual_seed(seed)  # the model's own seeded initialisation: a detector that proposes boxes
    model = hrnet_mm.get_model(os.path.join(ROOT, config), pretrained=False)
    state = model.state_dict()
    buf = io.BytesIO()
    torch.save({'state_dict': state, 'meta': {'dataset_meta': model.dataset_meta}}, buf)
    return buf.getvalue()


@pytest.fixture(scope='module')
def published():
    """{name: (config, file bytes)} of the private index's entries."""
    return {'tiny-cls': (CLS, _weights(CLS, 0)), 'tiny-det': (DET, _weights(DET, 1))}


@pytest.fixture
def zoo(tmp_path, server, monkeypatch, published):
    models = []
    for name, (config, data) in published.items():
        path = f'/models/{name}-{hashlib.sha256(data).hexdigest()[:8]}.pth'
        server.files[path] = data
        models.append({'Name': name, 'Config': config, 'Weights': server.url + path, 'License': 'Apache-2.0',
                       'Metadata': {'Parameters': 1}})
    models.append({'Name': 'tiny-offline', 'Config': CLS, 'Weights': 'http://127.0.0.1:9/offline-0123abcd.pth',
                   'License': 'Apache-2.0', 'Metadata': {'Parameters': 1}})
    (tmp_path / 'metafile.yml').write_text(yaml.safe_dump({'Models': models}))
    (tmp_path / 'model-index.yml').write_text(yaml.safe_dump({'Import': ['metafile.yml']}))
    monkeypatch.setenv('HRNET_MM_MODEL_INDEX', str(tmp_path / 'model-index.yml'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv('HRNET_MM_MIRROR', raising=False)
    return tmp_path


def test_list_models_matches_names_and_tasks():
    names = hrnet_mm.list_models()
    assert len(names) >= 170 and names == sorted(names) and 'imagenet/w32' not in names  # models only
    pose = hrnet_mm.list_models('*hrnet-w32*coco-256x192', task='pose')
    assert 'td-hm_hrnet-w32_8xb64-210e_coco-256x192' in pose and all('w32' in n for n in pose)
    assert hrnet_mm.list_models('FASTER-RCNN_HRNETV2P-W32-1X*') == ['faster-rcnn_hrnetv2p-w32-1x_coco']
    assert len(hrnet_mm.list_models(task='classification')) == 9
    with pytest.raises(ValueError, match='unknown task'):
        hrnet_mm.list_models(task='depth')
    with pytest.raises(ValueError, match="imagenet/w32 holds the ImageNet weights of an HRNet-w32 backbone, not a "
                       "model: start a config from them with init_cfg=dict"):
        hrnet_mm.get_model('imagenet/w32')


def test_get_model_by_name_downloads_checks_and_loads(zoo, server, published):
    model = hrnet_mm.get_model('tiny-cls')
    assert type(model).__name__ == 'ImageClassifier' and not model.training
    saved = torch.load(io.BytesIO(published['tiny-cls'][1]), weights_only=False)['state_dict']
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert model.cfg.test_dataloader.dataset.pipeline  # the test pipeline travels with the model
    hrnet_mm.get_model('tiny-cls')  # cached: no second download
    assert len(server.hits) == 1
    det = hrnet_mm.get_model('tiny-det', pretrained=False)
    assert type(det).__name__ == 'FasterRCNN'


def test_building_leaves_the_default_scope_alone():
    """The libraries' init functions and inferencers set mmengine's default scope for the process; hrnet_mm puts
    the caller's back (a later HRNet built without a scope would otherwise be read as mmpose's)."""
    from mmengine.registry import DefaultScope
    before = DefaultScope.get_current_instance()
    hrnet_mm.get_inferencer(os.path.join(ROOT, POSE), pretrained=False, det_model='whole_image')
    hrnet_mm.get_model(os.path.join(ROOT, DET), pretrained=False)
    assert DefaultScope.get_current_instance() is before


def test_get_model_takes_a_config_and_a_checkpoint(tmp_path, published):
    (tmp_path / 'det.pth').write_bytes(published['tiny-det'][1])
    model = hrnet_mm.get_model(os.path.join(ROOT, DET), pretrained=str(tmp_path / 'det.pth'))
    saved = torch.load(io.BytesIO(published['tiny-det'][1]), weights_only=False)['state_dict']
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_bad_names_and_files_get_one_clear_error(zoo, tmp_path, published):
    with pytest.raises(ModelNotFoundError, match="no hrnet_mm model called 'tiny-clss'; did you mean tiny-cls"):
        hrnet_mm.get_model('tiny-clss')
    with pytest.raises(ModelNotFoundError, match='config file not found: configs/demo/nope.py'):
        hrnet_mm.get_model('configs/demo/nope.py')
    with pytest.raises(ValueError, match='has no entry in the weights table'):
        hrnet_mm.get_model(os.path.join(ROOT, POSE))
    with pytest.raises(CheckpointFileError, match=r'offline\? put offline-0123abcd.pth into .*torch.hub.checkpoints, '
                       'or set HRNET_MM_MIRROR'):
        hrnet_mm.get_model('tiny-offline')
    (tmp_path / 'page.pth').write_text('<!DOCTYPE html><html><body>Sign in</body></html>')
    with pytest.raises(CheckpointFileError, match='the file is an HTML/XML page, not a checkpoint'):
        hrnet_mm.get_model(os.path.join(ROOT, CLS), pretrained=str(tmp_path / 'page.pth'))
    (tmp_path / 'det.pth').write_bytes(published['tiny-det'][1])
    with pytest.raises(CheckpointMismatchError, match='does not fit the model'):
        hrnet_mm.get_model(os.path.join(ROOT, CLS), pretrained=str(tmp_path / 'det.pth'))


def _image(tmp_path) -> str:
    from PIL import Image
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (96, 128, 3), dtype=np.uint8)).save(tmp_path / 'img.jpg')
    return str(tmp_path / 'img.jpg')


def test_pose_inferencer_runs_the_given_detector_first(zoo, tmp_path, published):
    """A top-down model gets a person detector (here the private index's detector by name, class 0); a
    bottom-up one none. The predictions come from mmpose's own inferencer."""
    inferencer = hrnet_mm.get_inferencer(os.path.join(ROOT, POSE), pretrained=False, det_model='tiny-det',
                                         det_cat_ids=[0])
    assert inferencer.det_source.name == 'tiny-det' and inferencer.detector is not None
    assert inferencer.det_cat_ids == (0,)
    result = next(inferencer(_image(tmp_path), bbox_thr=0.0))
    assert isinstance(result['predictions'][0], list)
    whole = hrnet_mm.get_inferencer(os.path.join(ROOT, POSE), pretrained=False, det_model='whole_image')
    assert whole.detector is None and whole.det_source is None
    (person,) = next(whole(_image(tmp_path)))['predictions'][0]
    assert np.asarray(person['keypoints']).shape == (17, 2)
    assert person['bbox'][0] == pytest.approx((0, 0, 128, 96))
    bottom_up = hrnet_mm.get_inferencer(os.path.join(ROOT, BOTTOM_UP), pretrained=False)
    assert bottom_up.det_source is None and getattr(bottom_up, 'detector', None) is None
    with pytest.raises(ValueError, match='not an mmdet detector'):
        hrnet_mm.get_inferencer(os.path.join(ROOT, POSE), pretrained=False, det_model='tiny-cls',
                                det_weights=False)


def test_cli_lists_models():
    proc = subprocess.run([sys.executable, '-m', 'hrnet_mm.cli', 'list', 'w32_8xb64-210e_coco-256x192'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.split()[:2] == ['td-hm_hrnet-w32_8xb64-210e_coco-256x192', 'pose'] and 'AP 0.746' in line
    proc = subprocess.run([sys.executable, '-m', 'hrnet_mm.cli', 'list', 'no-such-model'], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and '0 model(s)' in proc.stderr


def test_infer_tool_takes_names_and_writes_coco_results(zoo, tmp_path):
    """``tools/infer.py NAME IMAGE``: the detector by name; a top-down pose config with that detector by name
    (``--det-model``); both write COCO results that pycocotools' ``loadRes`` accepts."""
    from pycocotools.coco import COCO
    image = _image(tmp_path)
    infer = os.path.join(ROOT, 'tools', 'infer.py')
    run = [sys.executable, infer]
    proc = subprocess.run([*run, 'tiny-det', image, '--out-dir', str(tmp_path / 'det'), '--score-thr', '0',
                           '--pred-out', str(tmp_path / 'det.json')], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isfile(tmp_path / 'det' / 'img.png') and '1 image(s) written' in proc.stdout
    proc = subprocess.run([*run, os.path.join(ROOT, POSE), '--checkpoint', str(zoo / 'pose.pth'), image,
                           '--out-dir', str(tmp_path / 'pose'), '--det-model', 'tiny-det', '--bbox-thr', '0',
                           '--pred-out', str(tmp_path / 'pose.json')], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'checkpoint file not found' in proc.stderr  # no such file yet
    torch.save({'state_dict': hrnet_mm.get_model(os.path.join(ROOT, POSE), pretrained=False).state_dict()},
               zoo / 'pose.pth')
    proc = subprocess.run(proc.args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gt = COCO()
    gt.dataset = dict(images=[dict(id=1, width=128, height=96, file_name=image)], annotations=[],
                      categories=[dict(id=1, name='square'), dict(id=2, name='disc')])
    gt.createIndex()
    for name, keys in (('det.json', {'bbox', 'score', 'category_id'}), ('pose.json', {'keypoints', 'bbox'})):
        with open(tmp_path / name) as f:
            results = json.load(f)
        assert results and all(keys <= set(r) and r['image_id'] == 1 and r['file_name'] == image for r in results)
        gt.loadRes(str(tmp_path / name))
    assert all(len(r['keypoints']) == 17 * 3 for r in results)
    proc = subprocess.run([*run, 'tiny-dett', image, '--out-dir', str(tmp_path / 'x')], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert "infer.py: error: no hrnet_mm model called 'tiny-dett'; did you mean tiny-det" in proc.stderr
    assert not os.path.exists(tmp_path / 'x')


def _video(path, frames: int, size=(128, 96)) -> str:
    import cv2
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10.0, size)
    rng = np.random.RandomState(1)
    for _ in range(frames):
        writer.write(rng.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return str(path)


def test_infer_tool_draws_every_frame_of_a_video(zoo, tmp_path):
    """A video in, an annotated video out: the same frame count, size and rate, readable by OpenCV; the COCO results
    name each frame; the frames per second are reported. A video OpenCV cannot open is one line, and nothing is
    written."""
    import cv2
    clip = _video(tmp_path / 'clip.mp4', 7)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'infer.py'), 'tiny-det', clip, '--out-dir',
                           str(tmp_path / 'vis'), '--score-thr', '0', '--pred-out', str(tmp_path / 'r.json')],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '7 frame(s) in' in proc.stderr and 'frames/s' in proc.stderr
    assert sorted(os.listdir(tmp_path / 'vis')) == ['clip.mp4']
    cap = cv2.VideoCapture(str(tmp_path / 'vis' / 'clip.mp4'))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (128, 96)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 7
    with open(tmp_path / 'r.json') as f:
        names = {r['file_name'] for r in json.load(f)}
    assert names <= {f'{clip}#{i}' for i in range(7)} and names
    (tmp_path / 'broken.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(300))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'infer.py'), 'tiny-det',
                           str(tmp_path / 'broken.mp4'), '--out-dir', str(tmp_path / 'vis2')],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert 'infer.py: error: cannot open video' in proc.stderr or 'infer.py: error: cannot read video' in proc.stderr
    assert not os.path.exists(tmp_path / 'vis2')


@pytest.mark.parametrize('model', ['tiny-det', 'tiny-cls'])
def test_infer_tool_keeps_the_colours(zoo, tmp_path, model):
    """Where nothing is drawn, the output image is the input, channel for channel (images and video frames go to
    the libraries as BGR arrays; the drawing must get them as RGB)."""
    from PIL import Image
    rng = np.random.RandomState(2)
    pixels = rng.randint(0, 255, (96, 128, 3), dtype=np.uint8)
    pixels[:, :, 0] = 250  # a strongly red image: a swap of red and blue shows
    Image.fromarray(pixels).save(tmp_path / 'red.png')
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'infer.py'), model, str(tmp_path / 'red.png'),
                           '--out-dir', str(tmp_path / 'vis'), '--score-thr', '1.01'], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    drawn = np.asarray(Image.open(tmp_path / 'vis' / 'red.png').convert('RGB'))
    assert drawn.shape == pixels.shape
    if model == 'tiny-det':
        assert np.array_equal(drawn, pixels)
    else:  # the classes are written in the top-left corner
        assert np.array_equal(drawn[48:], pixels[48:]) and drawn[..., 0].mean() > 200
