"""The weights table and ``hrnet_mm://`` downloads.

Downloads run against a real ``http.server`` on 127.0.0.1 in a thread (no network beyond it): cache hit,
hash mismatch, an HTML page, an interrupted body, retries and the ``HRNET_MM_MIRROR`` variable. A private
model index (``HRNET_MM_MODEL_INDEX``) names the served files, since the real entries' hashes belong to files
that cannot be fetched offline; the real table is checked for its parameters against the configs.
"""
from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch
import yaml
from conftest import TINY_EXTRA, randomize_
from mmengine.config import Config, ConfigDict

from hrnet_mm.models import HRNet
from hrnet_mm.models.checkpoint import CheckpointFileError, CheckpointMismatchError
from hrnet_mm.registry import build_in_scope
from hrnet_mm.utils import count_params
from hrnet_mm.zoo import hub
from hrnet_mm.zoo.weights import get_entry, load_table


def _checkpoint_bytes(seed=0):
    model = randomize_(HRNet(extra=dict(TINY_EXTRA)), seed)
    buf = io.BytesIO()
    torch.save({'state_dict': {'backbone.' + k: v for k, v in model.state_dict().items()}, 'meta': {}}, buf)
    return model, buf.getvalue()


@pytest.fixture
def zoo(tmp_path, server, monkeypatch):
    """A private index with one served checkpoint; the torch hub cache in tmp_path."""
    model, data = _checkpoint_bytes()
    sha = hashlib.sha256(data).hexdigest()
    path = f'/models/tiny/tiny_hrnet-{sha[:8]}.pth'
    server.files[path] = data
    meta = {'Models': [{'Name': 'tiny', 'Config': 'configs/demo/tiny.py', 'Weights': server.url + path,
                        'Metadata': {'Parameters': count_params(model)}, 'License': 'Apache-2.0'}]}
    (tmp_path / 'metafile.yml').write_text(yaml.safe_dump(meta))
    (tmp_path / 'model-index.yml').write_text(yaml.safe_dump({'Import': ['metafile.yml']}))
    monkeypatch.setenv('HRNET_MM_MODEL_INDEX', str(tmp_path / 'model-index.yml'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv('HRNET_MM_MIRROR', raising=False)
    return dict(model=model, data=data, path=path, sha=sha, cache=tmp_path / 'torch' / 'hub' / 'checkpoints')


def _cache_files(zoo):
    return sorted(p.name for p in zoo['cache'].iterdir()) if zoo['cache'].exists() else []


def test_pretrained_by_name_downloads_once_then_hits_the_cache(zoo, server, capsys):
    m = HRNet(extra=dict(TINY_EXTRA), init_cfg=dict(type='Pretrained', checkpoint='hrnet_mm://tiny'))
    m.init_weights()
    for k, v in zoo['model'].state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert _cache_files(zoo) == [zoo['path'].rsplit('/', 1)[1]]
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.load_checkpoint('hrnet_mm://tiny')  # the path load_from takes
    assert server.hits == [zoo['path']]  # one download
    err = capsys.readouterr().err  # not a terminal: one line at the start, one at the end
    assert f'hrnet_mm: downloading {server.url}{zoo["path"]}' in err
    assert 'hrnet_mm: downloaded tiny_hrnet-' in err and err.count('\n') == 2


def test_hash_mismatch_is_an_error_and_leaves_no_cache_file(zoo, server):
    server.files[zoo['path']] = _checkpoint_bytes(seed=1)[1]  # another file under the published name
    with pytest.raises(CheckpointFileError, match=f'does not start with {zoo["sha"][:8]}'):
        hub.load_from_hrnet_mm('hrnet_mm://tiny')
    assert _cache_files(zoo) == []


def test_html_page_is_an_error_then_a_retry_downloads_again(zoo, server):
    server.modes[zoo['path']] = ['html']
    with pytest.raises(CheckpointFileError, match='HTML/XML page, not a checkpoint'):
        hub.load_from_hrnet_mm('hrnet_mm://tiny')
    assert _cache_files(zoo) == []
    assert 'state_dict' in hub.load_from_hrnet_mm('hrnet_mm://tiny')
    assert len(server.hits) == 2


def test_interrupted_download_is_an_error_then_a_retry_works(zoo, server):
    server.modes[zoo['path']] = ['truncate']
    with pytest.raises(CheckpointFileError, match=r'interrupted: received \d+ of \d+ bytes'):
        hub.load_from_hrnet_mm('hrnet_mm://tiny')
    assert _cache_files(zoo) == []
    assert 'state_dict' in hub.load_from_hrnet_mm('hrnet_mm://tiny')
    assert _cache_files(zoo) == [zoo['path'].rsplit('/', 1)[1]]


def test_corrupt_cache_file_is_replaced(zoo, server):
    hub.load_from_hrnet_mm('hrnet_mm://tiny')
    cached = zoo['cache'] / zoo['path'].rsplit('/', 1)[1]
    cached.write_bytes(zoo['data'][:100])  # truncated on disk
    hub.load_from_hrnet_mm('hrnet_mm://tiny')
    assert cached.read_bytes() == zoo['data'] and len(server.hits) == 2


def test_mirror_url_prefix(zoo, server, monkeypatch):
    server.files['/mirror' + zoo['path']] = zoo['data']
    del server.files[zoo['path']]
    monkeypatch.setenv('HRNET_MM_MIRROR', server.url + '/mirror')
    assert 'state_dict' in hub.load_from_hrnet_mm('hrnet_mm://tiny')
    assert server.hits == ['/mirror' + zoo['path']]


def test_mirror_directory_offline_and_real_names(zoo, server, tmp_path, monkeypatch):
    mirror = tmp_path / 'offline'
    mirror.mkdir()
    (mirror / zoo['path'].rsplit('/', 1)[1]).write_bytes(zoo['data'])
    monkeypatch.setenv('HRNET_MM_MIRROR', str(mirror))
    assert 'state_dict' in hub.load_from_hrnet_mm('hrnet_mm://tiny')
    assert server.hits == [] and _cache_files(zoo) == []  # used in place
    # the real table: a published name resolves to its file name and is hash-checked against it
    monkeypatch.delenv('HRNET_MM_MODEL_INDEX')
    entry = get_entry('imagenet/w32')
    (mirror / entry.filename).write_bytes(zoo['data'])
    with pytest.raises(CheckpointFileError, match=f'hrnetv2_w32-dc9eeb4f.pth: sha256 .* does not start with '
                                                  f'{entry.hash_prefix}'):
        hub.load_from_hrnet_mm('hrnet_mm://imagenet/w32')
    with pytest.raises(CheckpointFileError, match='is not in the HRNET_MM_MIRROR directory'):
        hub.load_from_hrnet_mm('hrnet_mm://imagenet/w48')
    with pytest.raises(CheckpointFileError, match='no hrnet_mm weights called'):
        hub.load_from_hrnet_mm('hrnet_mm://imagenet/w33')


def test_checkpoint_of_another_width_through_the_scheme_names_the_problem(zoo):
    m = HRNet(arch='w18_small', init_cfg=dict(type='Pretrained', checkpoint='hrnet_mm://tiny'))
    with pytest.raises(CheckpointMismatchError, match='hrnet_mm://tiny.*\n(.*\n)*.*shape mismatch'):
        m.init_weights()


def test_table_lists_every_published_checkpoint_with_weights_and_metrics():
    table = load_table()
    models = [e for e in table if e.kind == 'model']
    assert len(models) == 173 and len({e.name for e in table}) == len(table)
    assert {e.library for e in models} == {'mmdet', 'mmseg', 'mmpose', 'mmpretrain'}
    assert {e.name for e in table if e.kind == 'backbone'} == {
        'imagenet/w18_small_v2', 'imagenet/w18', 'imagenet/w32', 'imagenet/w40', 'imagenet/w48',
        'imagenet/w32-mmpose', 'imagenet/w48-mmpose'}
    unhashed = [e.name for e in table if e.hash_prefix is None]
    assert unhashed == ['td-hm_hrnet-w32_8xb64-210e_exlpose-256x192']  # published without a hash in its name
    for e in table:
        assert e.url.startswith('https://download.openmmlab.com/'), e.name
        assert e.hash_prefix is None or len(e.hash_prefix) == 8, e.name
        assert e.license and e.source.get('Weights') and e.params > 0 and e.flops > 0
        assert e.kind == 'backbone' or e.metrics, e.name
    assert get_entry('detection/faster-rcnn_hrnetv2p-w32-1x_coco.py').metrics['COCO']['box AP'] == 40.2
    assert get_entry('htc_hrnetv2p-w40_20e_coco').metrics['COCO'] == {'box AP': 46.4, 'mask AP': 40.8}
    assert get_entry('ocrnet_hr48_4xb2-160k_cityscapes-512x1024').metrics['Cityscapes']['mIoU'] == 81.35
    assert get_entry('td-hm_hrnet-w32_8xb64-210e_coco-256x192').hash_prefix == '81c58e40'
    # DEKR's files put the hash before the date: name_<hash>-<date>.pth
    assert get_entry('dekr_hrnet-w32_8xb10-140e_coco-512x512').hash_prefix == 'ac7c17bf'
    assert get_entry('hrnet-w18_3rdparty_8xb32-ssld_in1k').metrics['ImageNet-1k']['Top 1 Accuracy'] == 81.06
    # a config's own recipe comes before other files for it (the SSLD weights), so its name finds its recipe
    assert get_entry('hrnet-w18_4xb32_in1k').name == 'hrnet-w18_3rdparty_8xb32_in1k'
    # the peers' metafile errors, corrected: the 160k OCRNet files under their own config, PoseTrack18's two
    # evaluations of one file kept apart
    assert get_entry('ocrnet_hr18_4xb4-160k_ade20k-512x512').url.endswith('160k_ade20k_20200615_200940-d8fcd9d1.pth')
    pt = get_entry('td-hm_hrnet-w32_8xb64-20e_posetrack18-256x192').metrics
    assert pt['PoseTrack18 (ground-truth boxes)']['Total'] == 83.4
    assert pt['PoseTrack18 (detected boxes)']['Total'] == 76.9


def test_unknown_names_suggest_the_closest():
    with pytest.raises(KeyError, match="no hrnet_mm weights called 'faster-rcnn_hrnetv2p-w32_1x_coco'; did you mean "
                                       "faster-rcnn_hrnetv2p-w32-1x_coco"):
        get_entry('faster-rcnn_hrnetv2p-w32_1x_coco')


def _plain(obj):
    if isinstance(obj, dict):
        return {k: ('BN' if k == 'type' and v == 'SyncBN' else _plain(v)) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _entry_model_cfg(entry):
    if entry.kind == 'backbone':
        return dict(type='ImageClassifier', backbone=dict(type='hrnet_mm.HRNet', arch=entry.arch),
                    neck=[dict(type='hrnet_mm.HRFuseScales', in_channels=entry.arch, layout='official'),
                          dict(type='GlobalAveragePooling')],
                    head=dict(type='LinearClsHead', in_channels=2048, num_classes=1000,
                              loss=dict(type='CrossEntropyLoss')))
    cfg = Config.fromfile(entry.config_path)
    return _plain(cfg.to_dict()['model'])


def test_backbone_entries_have_the_params_of_their_classifier():
    """Built on the meta device (no weights allocated). The full-model entries are checked against the model their
    config builds in tests/zoo/test_configs.py."""
    counts, wrong = {}, []
    for entry in [e for e in load_table() if e.kind == 'backbone']:
        cfg = _entry_model_cfg(entry)
        library = 'mmpretrain' if entry.kind == 'backbone' else entry.library
        key = (library, json.dumps(cfg, sort_keys=True, default=repr))
        if key not in counts:
            with torch.device('meta'):
                counts[key] = count_params(build_in_scope(library, ConfigDict(cfg)))
        if counts[key] != entry.params:
            wrong.append(f'{entry.name}: table {entry.params}, model {counts[key]}')
    assert not wrong, wrong
    # the published counts these reproduce: official W*-C classifiers (anchors.md section 6), mmpretrain W18
    assert get_entry('imagenet/w18').params == 21_299_004 and get_entry('imagenet/w48').params == 77_469_864
    assert get_entry('imagenet/w18_small_v2').params == 15_597_464
    assert get_entry('hrnet-w18_3rdparty_8xb32_in1k').params == 21_295_164


def test_mim_and_mmengine_find_the_entries():
    from mim.commands.search import get_model_info
    info = get_model_info('hrnet_mm', shown_fields=['weight', 'config'], to_dict=True)
    assert info['faster-rcnn_hrnetv2p-w32-1x_coco']['config'] == 'configs/detection/faster-rcnn_hrnetv2p-w32-1x_coco.py'
    assert info['imagenet/w32']['weight'].endswith('hrnetv2_w32-dc9eeb4f.pth')
    assert len(info) == 180
    from mmengine.hub import get_config
    cfg = get_config('hrnet_mm::classification/hrnet-w32_4xb32_in1k.py', pretrained=True)
    assert cfg.model_path.endswith('hrnet-w32_3rdparty_8xb32_in1k_20220120-c394f1ab.pth')  # the config's own entry


def test_open_mmlab_names_still_resolve():
    from mmengine.runner.checkpoint import CheckpointLoader, get_external_models
    loader = CheckpointLoader._get_checkpoint_loader('open-mmlab://msra/hrnetv2_w32')
    assert loader.__name__ == 'load_from_openmmlab'
    assert get_external_models()['msra/hrnetv2_w32'].endswith('hrnetv2_w32-dc9eeb4f.pth')
    assert CheckpointLoader._get_checkpoint_loader('hrnet_mm://imagenet/w32') is hub.load_from_hrnet_mm
