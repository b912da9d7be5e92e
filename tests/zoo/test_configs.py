"""The task configs under configs/{detection,segmentation,pose,classification}, generated from the peers.

* The committed configs, metafiles and configs/README.md are what ``tools/generate_zoo.py`` writes from the installed
  libraries today, and every HRNet config of the four libraries has exactly one of them.
* Each config keeps the peer's recipe: every setting outside the swapped HRNet modules equals the peer config's.
* Each config computes the peer's model: built through its library's registry, it takes the state dict of the model
  that the peer's own config builds (random weights and BN statistics) with ``strict=True``, and gives the same
  backbone/neck features and raw head outputs (``mode='tensor'``) on the same input, to a relative error below 1e-5
  (hrnet_mm's eval path is the peers' arithmetic, so the outputs are in fact bit-identical). Configs whose model is
  the same (schedules, datasets with the same classes) share one check; the weights table's parameter counts are
  checked on the same builds.
"""
from __future__ import annotations

import collections
import copy
import functools
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch
from conftest import randomize_, rel_err
from mmengine.config import Config, ConfigDict

import hrnet_mm
from hrnet_mm.cli.checkpoint_checks import replace_syncbn
from hrnet_mm.registry import build_in_scope
from hrnet_mm.utils import count_params
from hrnet_mm.zoo import generate, metafiles, peers, recipes

REPO = Path(__file__).resolve().parents[2]
CONFIG_ROOT = REPO / 'configs'
TASK_LIBRARY = {task: library for library, task in recipes.TASKS.items()}


def _discover() -> List[Path]:
    return sorted(p for task in TASK_LIBRARY for p in (CONFIG_ROOT / task).rglob('*.py'))


CONFIGS = _discover()


def _rel(path: Path) -> str:
    return path.relative_to(CONFIG_ROOT).as_posix()


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


def _peer_of(path: Path) -> Tuple[str, str]:
    """(library, peer config path) named by the config's ``_base_``."""
    base = Config._get_base_files(str(path))
    assert len(base) == 1 and '::' in base[0], f'{path}: expected one peer _base_, got {base}'
    library, peer = base[0].split('::')
    assert library == TASK_LIBRARY[_task(path)]
    return library, peer


def _peer_config(path: Path) -> Tuple[str, Dict[str, Any]]:
    library, peer = _peer_of(path)
    return library, _config(Path(peers.config_root(library)) / peer)


def _model_cfg(cfg: Dict[str, Any]) -> Dict[str, Any]:
    model = copy.deepcopy(cfg['model'])
    if cfg.get('data_preprocessor') is not None:  # what mmengine's Runner does with a top-level preprocessor
        model.setdefault('data_preprocessor', cfg['data_preprocessor'])
    return model


@pytest.fixture(scope='module', autouse=True)
def _one_thread_and_cache_cleanup():
    """Tiny inputs gain nothing from intra-op threads, and on a busy 2-core machine their spin-waits cost
    seconds per forward pass. The cached configs are dropped when the module is done."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _load.cache_clear()


# ------------------------------------------------------------------------------------------------ generation


def test_generated_files_are_up_to_date():
    """What ``python tools/generate_zoo.py --check`` checks: the committed files equal what the tool writes now
    (parameters and FLOPs taken from the committed metafiles; the parity tests below check the parameters)."""
    files = generate.expected_files(metafiles.committed_counts(str(REPO)))
    add, change, remove = generate.differences(str(REPO), files)
    assert (add, change, remove) == ([], [], []), 'run `python tools/generate_zoo.py` and review the changes'


def test_every_peer_hrnet_config_has_exactly_one_config():
    expected = sorted(generate.config_path(lib, peer)[len('configs/'):]
                      for lib in recipes.LIBRARIES for peer in peers.hrnet_configs(lib))
    assert sorted(_rel(p) for p in CONFIGS) == expected
    counts = collections.Counter(_task(p) for p in CONFIGS)
    assert counts == {'detection': 29, 'segmentation': 66, 'pose': 87, 'classification': 7}
    assert all(generate.is_generated(str(p)) for p in CONFIGS), 'configs/<task>/ holds generated configs only'


def test_generator_names_a_missing_library_in_one_line(monkeypatch, capsys):
    import importlib.util
    import sys
    sys.path.insert(0, str(REPO / 'tools'))
    import generate_zoo
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'mmpose' else real(name, *a))
    assert generate_zoo.main(['--check']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['generate_zoo.py: error: mmpose is not installed; `make install` installs the pinned stack']
    with pytest.raises(peers.LibraryNotInstalled, match="unknown library 'mmfoo'"):
        peers.config_root('mmfoo')


def test_rules_refuse_what_they_do_not_cover():
    model = dict(backbone=dict(type='HRNet', extra=dict(stage4=dict(num_channels=(18, 36, 72, 144)))),
                 neck=dict(type='FPN', in_channels=[18, 36, 72, 144]))
    with pytest.raises(recipes.RuleError, match="model.neck: no rule for neck type 'FPN'"):
        recipes.model_overrides('mmdet', model)
    model['neck'] = dict(type='FeatureMapProcessor', select_index=0)
    with pytest.raises(recipes.RuleError, match='is not the HRNetV2 concatenation'):
        recipes.model_overrides('mmpose', model)
    with pytest.raises(recipes.RuleError, match="the backbone is 'ResNet', not HRNet"):
        recipes.model_overrides('mmdet', dict(backbone=dict(type='ResNet')))


def test_readme_lists_every_config():
    readme = (CONFIG_ROOT / 'README.md').read_text()
    missing = [_rel(p) for p in CONFIGS if f'| {p.name} |' not in readme]
    assert not missing, f'configs/README.md does not list {missing}'


# ------------------------------------------------------------------------------------------------ recipes

SWAPPED = {'backbone', 'neck', 'pretrained'}


@pytest.mark.parametrize('path', CONFIGS, ids=_rel)
def test_config_keeps_the_peer_recipe(path: Path):
    ours = _config(path)
    library, peer = _peer_config(path)
    assert ours.pop('custom_imports') == dict(imports=['hrnet_mm'], allow_failed_imports=False)
    assert ours['default_scope'] == library
    # runner settings: data, pipelines, schedule, optimizer, batch size, hooks, evaluators, runtime
    for key in sorted((ours.keys() | peer.keys()) - {'model'}):
        assert ours.get(key) == peer.get(key), f'{key} differs from the peer recipe'
    om, pm = ours['model'], peer['model']
    assert {k: v for k, v in om.items() if k not in SWAPPED} == {k: v for k, v in pm.items() if k not in SWAPPED}
    # the backbone: the peer's arguments, type swapped, the hidden defaults written out only where the peer has none
    ob, pb = om['backbone'], pm['backbone']
    assert ob.pop('type') == recipes.BACKBONE and pb.pop('type') == 'HRNet'
    for rule in recipes.HIDDEN_DEFAULTS:
        if rule.library == library:
            key = rule.key.format(last='stage4').split('.')
            here, there = ob, pb
            for part in key[:-1]:
                here, there = here.get(part, {}), there.get(part, {})
            if key[-1] not in there:
                assert here.pop(key[-1]) == rule.value, rule
    if pm.get('pretrained'):
        assert om.get('pretrained') is None
        assert ob.pop('init_cfg') == dict(type='Pretrained', checkpoint=pm['pretrained'])
    assert ob == pb
    # necks: hrnet_mm's module of the same function
    on, pn = om.get('neck'), pm.get('neck')
    for o, p in zip(on if isinstance(on, list) else [on], pn if isinstance(pn, list) else [pn]):
        if p is None:
            assert o is None
        elif p['type'] in recipes.NECKS:
            assert o['type'] == recipes.NECKS[p['type']]
        else:
            assert o == p


def test_hidden_defaults_are_the_peers_defaults():
    """The rules write out what the peers' own HRNet classes default to (and hrnet_mm's does not)."""
    import inspect

    from mmdet.models.backbones import HRNet as MMDetHRNet
    from mmpose.models.backbones import HRNet as MMPoseHRNet
    from mmseg.models.backbones.hrnet import HRModule as MMSegHRModule
    rules = {(r.library, r.key): r.value for r in recipes.HIDDEN_DEFAULTS}
    ours = inspect.signature(hrnet_mm.HRNet).parameters
    assert rules[('mmdet', 'norm_eval')] is inspect.signature(MMDetHRNet).parameters['norm_eval'].default is True
    assert ours['norm_eval'].default is False
    assert rules[('mmpose', 'init_cfg')] == inspect.signature(MMPoseHRNet).parameters['init_cfg'].default
    assert "mode='bilinear'" in inspect.getsource(MMSegHRModule._make_fuse_layers)
    assert rules[('mmseg', 'upsample_cfg')] == dict(mode='bilinear', align_corners=False)
    assert rules[('mmpose', 'extra.{last}.multiscale_output')] is False


# ------------------------------------------------------------------------------------------------ parity


def _model_key(path: Path) -> str:
    model = _model_cfg(_config(path))
    model.pop('train_cfg', None)
    return json.dumps(model, sort_keys=True, default=repr)


def _parity_groups() -> List[Tuple[str, List[Path]]]:
    """Configs grouped by the model they build (schedules and runtime settings do not change it)."""
    groups: Dict[str, List[Path]] = {}
    for path in CONFIGS:
        groups.setdefault(_model_key(path), []).append(path)
    out = [(_rel(paths[0]), paths) for paths in groups.values()]
    _load.cache_clear()
    return sorted(out)


PARITY = _parity_groups()


def _slow(rel: str) -> bool:
    """The heaviest builds (W40 and wider, the cascades) run only in the full suite."""
    return any(key in rel for key in ('w40', 'w44', 'w48', 'w64', 'hr48', 'cascade', 'htc'))


def _fresh(library: str, cfg: Dict[str, Any]) -> torch.nn.Module:
    model_cfg = replace_syncbn(_model_cfg(cfg))
    model_cfg['backbone'].pop('init_cfg', None)  # no download; init_weights is not called either
    model_cfg['backbone'].pop('pretrained', None)
    model_cfg.pop('pretrained', None)
    if 'rpn' in (model_cfg.get('test_cfg') or {}):  # a few proposals suffice to run the RoI heads
        model_cfg['test_cfg']['rpn'].update(nms_pre=64, max_per_img=8)
    return build_in_scope(library, ConfigDict(model_cfg)).eval()


def _tensors(obj: Any) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    return []


def _samples(library: str, size: int):
    if library != 'mmdet':
        return None
    from mmdet.structures import DetDataSample
    sample = DetDataSample()
    sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                             batch_input_shape=(size, size), scale_factor=(1.0, 1.0)))
    return [sample]


def _entries_by_config() -> Dict[str, List[Any]]:
    from hrnet_mm.zoo.weights import load_table
    out: Dict[str, List[Any]] = {}
    for entry in load_table():
        if entry.kind == 'model':
            out.setdefault(entry.config, []).append(entry)
    return out


@pytest.mark.parametrize('rel,paths', [pytest.param(r, p, marks=pytest.mark.slow) if _slow(r) else (r, p)
                                       for r, p in PARITY], ids=[r for r, _ in PARITY])
def test_config_computes_the_peer_model(rel: str, paths: List[Path]):
    path = paths[0]
    library, peer_cfg = _peer_config(path)
    peer = _fresh(library, peer_cfg)
    for i, child in enumerate(peer.children()):  # randomize_ takes no 0-dim tensors (FCOS's Scale)
        if all(t.dim() > 0 for t in child.state_dict().values()):
            randomize_(child, seed=i)
    ours = _fresh(library, _config(path))
    assert isinstance(ours.backbone, hrnet_mm.HRNet)
    ours.load_state_dict(peer.state_dict(), strict=True)

    size = 64
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours_out = (ours.extract_feat(x), ours(x, _samples(library, size), mode='tensor'))
        peer_out = (peer.extract_feat(x), peer(x, _samples(library, size), mode='tensor'))
    ours_t, peer_t = _tensors(ours_out), _tensors(peer_out)
    assert len(ours_t) == len(peer_t) > 1
    for a, b in zip(ours_t, peer_t):
        assert torch.isfinite(b).all()
        assert rel_err(a, b) < 1e-5

    # the weights table describes these models: its parameter counts are those of the build
    entries = _entries_by_config()
    params = count_params(ours)
    for p in paths:
        for entry in entries.get(f'configs/{_rel(p)}', []):
            assert entry.params == params, entry.name
