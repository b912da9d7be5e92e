"""The task configs under configs/{detection,segmentation,pose,classification}.

Every config (found by glob, ``_base_`` folders excluded) must parse, build through its task library's registry
with hrnet_mm's backbone and run one forward pass in ``mode='tensor'`` on a tiny input; and it must reproduce
the recipe of the peer config it names in ``PEERS``: every runner setting (data, schedule, optimizer, hooks, ...)
and every model setting outside the swapped HRNet modules equal to the peer's, the same effective backbone
settings (norm layers, norm_eval, fusion upsampling, pretrained weights) and the same parameter shapes.
"""
from __future__ import annotations

import collections
import copy
import functools
import importlib
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch
from conftest import randomize_, rel_err
from mmengine.config import Config, ConfigDict
from torch.nn.modules.batchnorm import _BatchNorm

import hrnet_mm
from hrnet_mm.registry import build_in_scope
from hrnet_mm.tool_utils import replace_syncbn

REPO = Path(__file__).resolve().parents[1]
CONFIG_ROOT = REPO / 'configs'
TASK_LIBRARY = {'detection': 'mmdet', 'segmentation': 'mmseg', 'pose': 'mmpose', 'classification': 'mmpretrain'}


def _discover() -> List[Path]:
    return sorted(p for task in TASK_LIBRARY for p in (CONFIG_ROOT / task).rglob('*.py')
                  if '_base_' not in p.relative_to(CONFIG_ROOT).parts)


CONFIGS = _discover()


def _rel(path: Path) -> str:
    return path.relative_to(CONFIG_ROOT).as_posix()


def _slow(path: Path) -> bool:
    """The heaviest models (W48, W64, the cascades) run their forward pass only in the full suite."""
    return any(key in path.name for key in ('w48', 'w64', 'cascade'))


# Our config -> the peer config (relative to the library's .mim/configs) whose recipe it reproduces.
PEERS: Dict[str, str] = {
    'detection/faster-rcnn_hrnetv2p-w18_8xb2-1x_coco.py': 'hrnet/faster-rcnn_hrnetv2p-w18-1x_coco.py',
    'detection/faster-rcnn_hrnetv2p-w32_8xb2-1x_coco.py': 'hrnet/faster-rcnn_hrnetv2p-w32-1x_coco.py',
    'detection/faster-rcnn_hrnetv2p-w40_8xb2-1x_coco.py': 'hrnet/faster-rcnn_hrnetv2p-w40-1x_coco.py',
    'detection/faster-rcnn_hrnetv2p-w18_8xb2-2x_coco.py': 'hrnet/faster-rcnn_hrnetv2p-w18-2x_coco.py',
    'detection/faster-rcnn_hrnetv2p-w32_8xb2-2x_coco.py': 'hrnet/faster-rcnn_hrnetv2p-w32_2x_coco.py',
    'detection/faster-rcnn_hrnetv2p-w40_8xb2-2x_coco.py': 'hrnet/faster-rcnn_hrnetv2p-w40_2x_coco.py',
    'detection/mask-rcnn_hrnetv2p-w18_8xb2-1x_coco.py': 'hrnet/mask-rcnn_hrnetv2p-w18-1x_coco.py',
    'detection/mask-rcnn_hrnetv2p-w32_8xb2-1x_coco.py': 'hrnet/mask-rcnn_hrnetv2p-w32-1x_coco.py',
    'detection/mask-rcnn_hrnetv2p-w40_8xb2-1x_coco.py': 'hrnet/mask-rcnn_hrnetv2p-w40_1x_coco.py',
    'detection/cascade-rcnn_hrnetv2p-w18_8xb2-20e_coco.py': 'hrnet/cascade-rcnn_hrnetv2p-w18-20e_coco.py',
    'detection/cascade-rcnn_hrnetv2p-w32_8xb2-20e_coco.py': 'hrnet/cascade-rcnn_hrnetv2p-w32-20e_coco.py',
    'detection/cascade-rcnn_hrnetv2p-w40_8xb2-20e_coco.py': 'hrnet/cascade-rcnn_hrnetv2p-w40-20e_coco.py',
    'detection/cascade-mask-rcnn_hrnetv2p-w18_8xb2-20e_coco.py': 'hrnet/cascade-mask-rcnn_hrnetv2p-w18_20e_coco.py',
    'detection/cascade-mask-rcnn_hrnetv2p-w32_8xb2-20e_coco.py': 'hrnet/cascade-mask-rcnn_hrnetv2p-w32_20e_coco.py',
    'detection/cascade-mask-rcnn_hrnetv2p-w40_8xb2-20e_coco.py': 'hrnet/cascade-mask-rcnn_hrnetv2p-w40-20e_coco.py',
    'detection/fcos_hrnetv2p-w18-gn-head_4xb4-1x_coco.py': 'hrnet/fcos_hrnetv2p-w18-gn-head_4xb4-1x_coco.py',
    'detection/fcos_hrnetv2p-w32-gn-head_4xb4-1x_coco.py': 'hrnet/fcos_hrnetv2p-w32-gn-head_4xb4-1x_coco.py',
    'pose/td-hm_hrnetv2-w18_8xb64-60e_wflw-256x256.py':
        'face_2d_keypoint/topdown_heatmap/wflw/td-hm_hrnetv2-w18_8xb64-60e_wflw-256x256.py',
}
PEERS.update({
    f'segmentation/fcn_hrnetv2-{ours}_{recipe}.py': f'hrnet/fcn_{peer}_{recipe}.py'
    for ours, peer in (('w18-small', 'hr18s'), ('w18', 'hr18'), ('w48', 'hr48'))
    for recipe in ('4xb2-40k_cityscapes-512x1024', '4xb2-80k_cityscapes-512x1024', '4xb2-160k_cityscapes-512x1024',
                   '4xb4-80k_ade20k-512x512', '4xb4-160k_ade20k-512x512')})
PEERS.update({
    f'pose/{name}.py': f'body_2d_keypoint/topdown_heatmap/coco/{name}.py'
    for name in ('td-hm_hrnet-w32_8xb64-210e_coco-256x192', 'td-hm_hrnet-w32_8xb64-210e_coco-384x288',
                 'td-hm_hrnet-w48_8xb32-210e_coco-256x192', 'td-hm_hrnet-w48_8xb32-210e_coco-384x288')})
PEERS.update({f'classification/hrnet-w{w}_4xb32-100e_in1k.py': f'hrnet/hrnet-w{w}_4xb32_in1k.py'
              for w in (18, 30, 32, 40, 44, 48, 64)})

# Top-level helper variables that only feed the model (compared through the model) or the schedule (compared
# through train_cfg/param_scheduler).
HELPER_KEYS = {'model', 'custom_imports', 'width', 'arch', 'norm_cfg', 'max_epochs'}
# Model keys replaced by hrnet_mm modules; compared through the built modules instead.
SWAPPED_MODEL_KEYS = {'backbone', 'neck', 'pretrained'}
# mmseg's decode head: HRNetV2Neck's mix conv takes over its resize_concat input transform and its one conv.
SEG_HEAD_MOVED = {'in_channels', 'in_index', 'channels', 'input_transform', 'num_convs'}


def _task(path: Path) -> str:
    return path.relative_to(CONFIG_ROOT).parts[0]


def _strip_scope(obj: Any) -> Any:
    """Plain dicts/lists without the ``_scope_`` keys that mmengine adds to configs inherited across packages."""
    if isinstance(obj, dict):
        return {k: _strip_scope(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_strip_scope(v) for v in obj)
    return obj


@functools.lru_cache(maxsize=None)
def _load(path: str) -> Dict[str, Any]:
    return _strip_scope(Config.fromfile(path).to_dict())


def _config(path: Path) -> Dict[str, Any]:
    return copy.deepcopy(_load(str(path)))


def _peer_config(path: Path) -> Tuple[str, Dict[str, Any]]:
    rel = _rel(path)
    assert rel in PEERS, f'{rel}: name the peer config whose recipe it reproduces in PEERS ({__file__})'
    library = TASK_LIBRARY[_task(path)]
    root = Path(importlib.import_module(library).__file__).parent / '.mim' / 'configs'
    return library, _config(root / PEERS[rel])


def _model_cfg(cfg: Dict[str, Any]) -> Dict[str, Any]:
    model = copy.deepcopy(cfg['model'])
    if cfg.get('data_preprocessor') is not None:  # what mmengine's Runner does with a top-level preprocessor
        model.setdefault('data_preprocessor', cfg['data_preprocessor'])
    return model


def _key(model_cfg: Dict[str, Any]) -> str:
    return json.dumps(model_cfg, sort_keys=True, default=repr)


# Configs that differ only in data or schedule (sorted next to each other) share one built model.
@functools.lru_cache(maxsize=1)
def _build_cached(library: str, key: str) -> torch.nn.Module:
    return build_in_scope(library, ConfigDict(json.loads(key)))


@functools.lru_cache(maxsize=8)
def _build_meta_cached(library: str, key: str) -> torch.nn.Module:
    with torch.device('meta'):
        return build_in_scope(library, ConfigDict(json.loads(key)))


def _build_meta(library: str, model_cfg: Dict[str, Any]) -> torch.nn.Module:
    """Builds without allocating or initialising weights: for comparing structure only."""
    return _build_meta_cached(library, _key(model_cfg))


@pytest.fixture(scope='module', autouse=True)
def _one_thread_and_cache_cleanup():
    """Tiny inputs gain nothing from intra-op threads, and on a busy 2-core machine their spin-waits cost
    seconds per forward pass. The cached configs and models are dropped when the module is done."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for cache in (_build_cached, _build_meta_cached, _load):
        cache.cache_clear()


def _shapes(module: torch.nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _norms(module: torch.nn.Module) -> collections.Counter:
    return collections.Counter(type(m).__name__ for m in module.modules() if isinstance(m, _BatchNorm))


def _tensors(obj: Any) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    return []


def test_configs_are_discovered():
    found = collections.Counter(_task(p) for p in CONFIGS)
    assert found == {'detection': 17, 'segmentation': 15, 'pose': 5, 'classification': 7}
    assert sorted(PEERS) == sorted(_rel(p) for p in CONFIGS), 'PEERS must name a peer for exactly the configs'


def test_readme_lists_every_config():
    readme = (CONFIG_ROOT / 'README.md').read_text()
    missing = [_rel(p) for p in CONFIGS if p.name not in readme]
    assert not missing, f'configs/README.md does not list {missing}'


@pytest.mark.parametrize('path', [pytest.param(p, marks=pytest.mark.slow) if _slow(p) else p for p in CONFIGS],
                         ids=_rel)
def test_config_builds_and_runs(path: Path):
    cfg = _config(path)
    library = cfg['default_scope']
    assert library == TASK_LIBRARY[_task(path)]
    assert cfg['custom_imports'] == dict(imports=['hrnet_mm'], allow_failed_imports=False)
    model_cfg = replace_syncbn(_model_cfg(cfg))
    model_cfg['backbone']['init_cfg'] = None  # no download; init_weights is not called either
    # The forward pass runs in train mode with batch statistics: a fresh BN's running statistics are the identity,
    # under which an untrained HRNet's activations grow to ~1e8 and the RPN proposes nothing.
    model_cfg['backbone']['norm_eval'] = False
    if 'rpn' in (model_cfg.get('test_cfg') or {}):  # a few proposals suffice to run the RoI heads
        model_cfg['test_cfg']['rpn'].update(nms_pre=64, max_per_img=8)
    model = _build_cached(library, _key(model_cfg)).train()
    assert type(model.backbone) is hrnet_mm.HRNet
    neck_cfgs = model_cfg.get('neck') or []
    neck_cfgs = neck_cfgs if isinstance(neck_cfgs, list) else [neck_cfgs]
    necks = list(model.neck) if isinstance(model_cfg.get('neck'), list) else [getattr(model, 'neck', None)]
    for neck_cfg, neck in zip(neck_cfgs, necks):
        if neck_cfg['type'].startswith('hrnet_mm.'):
            assert type(neck) is getattr(hrnet_mm, neck_cfg['type'][len('hrnet_mm.'):])

    size = 64
    inputs = torch.rand(1, 3, size, size)
    samples = None
    if library == 'mmdet':
        from mmdet.structures import DetDataSample

        sample = DetDataSample()
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                 batch_input_shape=(size, size), scale_factor=(1.0, 1.0)))
        samples = [sample]
    with torch.no_grad():
        out = model(inputs, samples, mode='tensor')
    tensors = _tensors(out)
    assert tensors and all(torch.isfinite(t).all() for t in tensors)
    if library == 'mmseg':
        assert out.shape == (1, model_cfg['decode_head']['num_classes'], size // 4, size // 4)
    elif library == 'mmpose':
        assert out.shape == (1, model_cfg['head']['out_channels'], size // 4, size // 4)
    elif library == 'mmpretrain':
        assert out.shape == (1, model_cfg['head']['num_classes'])


@pytest.mark.parametrize('path', CONFIGS, ids=_rel)
def test_recipe_matches_peer(path: Path):
    ours = _config(path)
    library, peer = _peer_config(path)

    # Runner settings: data, pipelines, schedule, optimizer, batch size, hooks, evaluators, runtime.
    for key in sorted((ours.keys() | peer.keys()) - HELPER_KEYS):
        assert ours.get(key) == peer.get(key), f'{key} differs from the peer recipe'

    # Model settings outside the swapped modules: type, data_preprocessor (normalisation), heads, train/test cfg.
    om, pm = _model_cfg(ours), _model_cfg(peer)
    swapped = SWAPPED_MODEL_KEYS | ({'decode_head'} if library == 'mmseg' else set())
    assert {k: v for k, v in om.items() if k not in swapped} == {k: v for k, v in pm.items() if k not in swapped}
    assert om['backbone']['type'] == 'hrnet_mm.HRNet'
    if library == 'mmseg':
        oh, ph = om['decode_head'], pm['decode_head']
        assert {k: v for k, v in oh.items() if k not in SEG_HEAD_MOVED} == \
            {k: v for k, v in ph.items() if k not in SEG_HEAD_MOVED}
        assert oh['in_channels'] == oh['channels'] == ph['channels'] == sum(ph['in_channels'])
        assert ph['input_transform'] == 'resize_concat' and ph['num_convs'] == 1 and oh['num_convs'] == 0
        assert om['neck']['out_channels'] == ph['channels'] and om['neck']['norm_cfg'] == ph['norm_cfg']

    # Pretrained ImageNet weights (mmseg names them at the model level).
    pb = pm['backbone']
    peer_ckpt = pm.get('pretrained') or (pb.get('init_cfg') or {}).get('checkpoint')
    assert (om['backbone'].get('init_cfg') or {}).get('checkpoint') == peer_ckpt
    assert not om.get('pretrained')

    # The built modules: same parameter shapes, norm layers, norm_eval and fusion upsampling as the peer.
    ours_model, peer_model = _build_meta(library, om), _build_meta(library, pm)
    ob, pbm = ours_model.backbone, peer_model.backbone
    assert _shapes(ob) == _shapes(pbm)
    assert ob.norm_eval == pbm.norm_eval
    assert _norms(ours_model) == _norms(peer_model)
    peer_up = dict(mode='bilinear', align_corners=False) if library == 'mmseg' else \
        (pb.get('extra') or {}).get('upsample', dict(mode='nearest'))
    assert ob.upsample_cfg['mode'] == peer_up['mode']
    if peer_up['mode'] != 'nearest':
        assert ob.upsample_cfg.get('align_corners') == peer_up.get('align_corners')
    ours_shapes, peer_shapes = _shapes(ours_model), _shapes(peer_model)
    if library == 'mmseg':  # the decode head's one conv lives in the neck's mix conv
        ours_shapes = {k.replace('neck.mix.', 'decode_head.convs.0.'): v for k, v in ours_shapes.items()}
    assert ours_shapes == peer_shapes


# One config per task (the narrowest width): with the peer's weights it must compute the peer's outputs.
PARITY = ['detection/faster-rcnn_hrnetv2p-w18_8xb2-1x_coco.py', 'detection/fcos_hrnetv2p-w18-gn-head_4xb4-1x_coco.py',
          'segmentation/fcn_hrnetv2-w18-small_4xb2-40k_cityscapes-512x1024.py',
          'pose/td-hm_hrnet-w32_8xb64-210e_coco-256x192.py', 'pose/td-hm_hrnetv2-w18_8xb64-60e_wflw-256x256.py',
          'classification/hrnet-w18_4xb32-100e_in1k.py']


def _fresh(library: str, cfg: Dict[str, Any]) -> torch.nn.Module:
    model_cfg = replace_syncbn(_model_cfg(cfg))
    model_cfg['backbone']['init_cfg'] = None
    model_cfg.pop('pretrained', None)
    return build_in_scope(library, ConfigDict(model_cfg)).eval()


@pytest.mark.parametrize('rel', PARITY)
def test_config_computes_the_peer_model(rel: str):
    path = CONFIG_ROOT / rel
    library, peer_cfg = _peer_config(path)
    ours, peer = _fresh(library, _config(path)), _fresh(library, peer_cfg)
    for i, child in enumerate(peer.children()):  # conftest's randomize_ takes no 0-dim tensors (FCOS's Scale)
        if all(t.dim() > 0 for t in child.state_dict().values()):
            randomize_(child, seed=i)
    state = peer.state_dict()
    if library == 'mmseg':  # mmseg's decode-head conv is HRNetV2Neck's mix conv
        state = {k.replace('decode_head.convs.0.', 'neck.mix.'): v for k, v in state.items()}
    ours.load_state_dict(state, strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        if library == 'mmdet':  # backbone, neck and the dense head (RPN or FCOS) on the same features
            ours_feats, peer_feats = ours.extract_feat(x), peer.extract_feat(x)
            head = 'rpn_head' if hasattr(peer, 'rpn_head') else 'bbox_head'
            ours_out = (ours_feats, getattr(ours, head)(ours_feats))
            peer_out = (peer_feats, getattr(peer, head)(peer_feats))
        else:
            ours_out, peer_out = ours(x, None, mode='tensor'), peer(x, None, mode='tensor')
    ours_t, peer_t = _tensors(ours_out), _tensors(peer_out)
    assert len(ours_t) == len(peer_t) > 0
    for a, b in zip(ours_t, peer_t):
        assert rel_err(a, b) < 1e-5
