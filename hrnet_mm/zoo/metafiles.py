"""hrnet_mm's weights table, written from the peers' metafiles: one entry for every checkpoint that a peer
publishes for one of its HRNet configs, and one for every ImageNet file those configs start from.

An entry (OpenMMLab metafile format, read by ``mim`` and :mod:`hrnet_mm.zoo.weights`) has the peer's name, the
hrnet_mm config, the URL, its hash prefix, the published results, parameters and FLOPs of the model the config builds
(counted here), the source and the license. :func:`weights_tables` makes the entries, :func:`metafile_text` the
file of one task; :mod:`hrnet_mm.zoo.generate` writes them.
"""
from __future__ import annotations

import functools
import json
import os.path as osp
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from . import peers, recipes
from .weights import hash_prefix_from_url

if TYPE_CHECKING:
    from .generate import GeneratedConfig

PAPER = dict(Title='Deep High-Resolution Representation Learning for Visual Recognition',
             URL='https://arxiv.org/abs/1908.07919')
CountsLookup = Callable[[str, str], Optional[Tuple[int, int, str]]]


# The ImageNet files that the peers' HRNet configs start from (their backbone init_cfg or mmseg's pretrained), by
# the name the peers give them -> hrnet_mm's entry name. Every such file must be here (the generator says so).
BACKBONE_FILES = {
    'open-mmlab://msra/hrnetv2_w18_small': 'imagenet/w18_small_v2',
    'open-mmlab://msra/hrnetv2_w18': 'imagenet/w18',
    'open-mmlab://msra/hrnetv2_w32': 'imagenet/w32',
    'open-mmlab://msra/hrnetv2_w40': 'imagenet/w40',
    'open-mmlab://msra/hrnetv2_w48': 'imagenet/w48',
    'https://download.openmmlab.com/mmpose/pretrain_models/hrnet_w32-36af842e.pth': 'imagenet/w32-mmpose',
    'https://download.openmmlab.com/mmpose/pretrain_models/hrnet_w48-8ef0771d.pth': 'imagenet/w48-mmpose',
}
IMAGENET_SOURCE = 'https://github.com/HRNet/HRNet-Image-Classification'
IMAGENET_LICENSE = 'MIT (HRNet-Image-Classification); trained on ImageNet-1k, whose terms of access apply'
OPENMMLAB_LICENSE = 'Apache-2.0 (OpenMMLab model zoo)'


def _license(library: str) -> str:
    # mmpretrain's HRNet files are conversions of the official ImageNet models (HRNet-Image-Classification)
    return IMAGENET_LICENSE if library == 'mmpretrain' else OPENMMLAB_LICENSE


def _forward(library: str) -> Tuple[Callable[[Any, Any], Any], str]:
    """How the FLOPs of a model of ``library`` are counted, and what the count covers."""
    if library == 'mmdet':
        return (lambda m, x: m.extract_feat(x)), 'backbone + neck'
    if library == 'mmpretrain':
        return (lambda m, x: m(x, mode='tensor')), 'whole model'
    return (lambda m, x: m._forward(x)), 'whole model'


def _flops_shape(library: str, cfg: Any) -> Tuple[Tuple[int, int], str]:
    """The input ``(H, W)`` the FLOPs are given for, and how it was chosen."""
    if library == 'mmdet':
        return (800, 1344), '800x1333 padded'
    if library == 'mmseg':
        h, w = cfg.get('crop_size') or cfg.model.data_preprocessor['size']
        return (h, w), 'the training crop'
    if library == 'mmpose':
        w, h = cfg.codec['input_size'] if isinstance(cfg.codec, dict) else cfg.codec[0]['input_size']
        return (h, w), "the codec's input size"
    return (224, 224), 'the test crop'


def _parse(text: str) -> Any:
    """The parsed config of source ``text`` (written to a temporary file for mmengine)."""
    from mmengine.config import Config
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'config.py')
        with open(path, 'w') as f:
            f.write(text)
        return Config.fromfile(path)


def _counted(library: str, text: str) -> Tuple[int, int, str]:
    """(parameters, multiply-adds, what and where) of the model that the config ``text`` builds."""
    cfg = _parse(text)
    model_cfg = cfg.to_dict()['model']
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.to_dict()['data_preprocessor'])
    (h, w), why = _flops_shape(library, cfg)
    params, macs, part = _count_model(library, json.dumps(model_cfg, sort_keys=True), h, w)
    return params, macs, f'3x{h}x{w} ({why}), {part}'


@functools.lru_cache(maxsize=None)
def _count_model(library: str, model_json: str, h: int, w: int) -> Tuple[int, int, str]:
    """Counted on the ``meta`` device (nothing allocated or computed) where the model's forward allows it, else
    on the CPU (heads that decode with data-dependent shapes)."""
    import torch
    from mmengine.config import ConfigDict

    from ..registry import build_in_scope
    from ..utils import count_macs, count_params
    forward, part = _forward(library)
    for device in ('meta', 'cpu'):
        with torch.device(device):
            model = build_in_scope(library, ConfigDict(json.loads(model_json)))
        try:
            return count_params(model), count_macs(model, (3, h, w), forward=forward)['total'], part
        except (NotImplementedError, RuntimeError):
            if device == 'cpu':
                raise
    raise AssertionError('unreachable')


def _imagenet_counts(arch: str) -> Tuple[int, int]:
    """(parameters, multiply-adds at 224x224) of the official W*-C classifier of ``arch``."""
    import torch
    from mmengine.config import ConfigDict

    from ..registry import build_in_scope
    from ..utils import count_macs, count_params
    cfg = dict(type='ImageClassifier', backbone=dict(type='hrnet_mm.HRNet', arch=arch),
               neck=[dict(type='hrnet_mm.HRFuseScales', in_channels=arch, layout='official'),
                     dict(type='GlobalAveragePooling')],
               head=dict(type='LinearClsHead', in_channels=2048, num_classes=1000,
                         loss=dict(type='CrossEntropyLoss')))
    with torch.device('meta'):
        model = build_in_scope('mmpretrain', ConfigDict(cfg))
    return count_params(model), count_macs(model, (3, 224, 224), forward=lambda m, x: m(x, mode='tensor'))['total']


def _arch_name(backbone: Dict[str, Any]) -> str:
    from ..models.arch import PRESETS, resolve
    spec = resolve(backbone.get('arch'), backbone.get('extra'))
    names = [name for name, preset in PRESETS.items() if tuple(preset) == tuple(spec)]
    if not names:
        raise recipes.RuleError(f'the backbone {backbone} is not one of the presets')
    return names[0]


def _model_entry(w: peers.PeerWeights, gc: 'GeneratedConfig', counts: Optional[Tuple[int, int, str]] = None
                 ) -> Dict[str, Any]:
    params, macs, flops_input = counts or _counted(w.library, gc.text)
    metadata: Dict[str, Any] = {}
    if w.metadata.get('Training Data'):
        metadata['Training Data'] = w.metadata['Training Data']
    metadata.update({'Parameters': params, 'FLOPs': macs, 'FLOPs Input': flops_input})
    if w.metadata.get('Architecture'):
        metadata['Architecture'] = list(w.metadata['Architecture'])
    source = {'Weights': w.url, 'Code': gc.base}
    if w.converted_from:
        source['Original Weights'] = w.converted_from.get('Weights')
        source['Original Code'] = w.converted_from.get('Code')
    entry = {'Name': w.name, 'In Collection': w.collection or 'HRNet', 'Config': gc.path, 'Metadata': metadata,
             'Results': w.results, 'Weights': w.url}
    prefix = hash_prefix_from_url(w.url)
    if prefix:
        entry['Hash Prefix'] = prefix
    entry['Converted From'] = {k: v for k, v in source.items() if v}
    entry['License'] = _license(w.library)
    return entry


def _backbone_entries(configs: Sequence['GeneratedConfig'], weights: Sequence[peers.PeerWeights]
                      ) -> List[Tuple[str, Dict[str, Any]]]:
    """(task, entry) of every ImageNet file the configs start from; full-model checkpoints of the table are not
    ImageNet files and are skipped."""
    from mmengine.runner.checkpoint import get_external_models

    published = {w.url for w in weights}
    found: Dict[str, Tuple[GeneratedConfig, Dict[str, Any]]] = {}
    for gc in configs:
        model = peers.load_config(gc.library, gc.peer).to_dict()['model']
        backbone = model['backbone']
        ckpt = model.get('pretrained') or (backbone.get('init_cfg') or {}).get('checkpoint')
        if ckpt and ckpt not in published and ckpt not in found:
            found[ckpt] = (gc, backbone)
    out = []
    for ckpt, (gc, backbone) in found.items():
        if ckpt not in BACKBONE_FILES:
            raise recipes.RuleError(f'{gc.base} starts from {ckpt}, which has no name in BACKBONE_FILES '
                                    f'({__file__})')
        url = get_external_models()[ckpt[len('open-mmlab://'):]] if ckpt.startswith('open-mmlab://') else ckpt
        arch = _arch_name(backbone)
        params, macs = _imagenet_counts(arch)
        entry = {'Name': BACKBONE_FILES[ckpt], 'In Collection': 'HRNet ImageNet backbones', 'Config': gc.path,
                 'Metadata': {'Training Data': 'ImageNet-1k', 'Parameters': params, 'FLOPs': macs,
                              'FLOPs Input': '3x224x224 (the W*-C classifier the file comes from), whole model',
                              'Backbone Arch': arch, 'Head Layout': 'official', 'Architecture': ['HRNet']},
                 'Weights': url, 'Hash Prefix': hash_prefix_from_url(url),
                 'Converted From': {'Weights': url, 'Code': IMAGENET_SOURCE, 'Also Known As': ckpt},
                 'License': IMAGENET_LICENSE}
        out.append((gc.task, entry))
    return sorted(out, key=lambda t: t[1]['Name'])


def _yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


METAFILE_HEADER = """\
# hrnet_mm's weights table for {task}: every checkpoint that {library} {version} publishes for its HRNet configs{extra}.
# Written by tools/generate_zoo.py from the peers' own metafiles: edit hrnet_mm/zoo, not this file.
# Results: the source's published numbers (not measured here). Parameters: the model the config builds. FLOPs:
# multiply-adds of the convs and linear layers (the HRNet papers' GFLOPs x 2**30) for `FLOPs Input`.
"""


def metafile_text(library: str, entries: Sequence[Dict[str, Any]], papers: Dict[str, Dict[str, Any]],
                  backbones: Sequence[Dict[str, Any]] = ()) -> str:
    """The ``configs/<task>/metafile.yml`` of ``library``'s entries (and, for classification, the ImageNet backbone
    files)."""
    entries = list(entries) + list(backbones)
    names = []
    for e in entries:
        if e['In Collection'] not in names:
            names.append(e['In Collection'])
    cols = []
    for name in names:
        readme = 'docs/model_zoo.md' if name == 'HRNet ImageNet backbones' else 'configs/README.md'
        cols.append({'Name': name, 'Metadata': {'Architecture': ['HRNet']}, 'Paper': papers.get(name, PAPER),
                     'README': readme})
    extra = ', and the ImageNet backbone files that the configs start from' if backbones else ''
    head = METAFILE_HEADER.format(task=recipes.TASKS[library], library=library,
                                  version=peers.library_version(library), extra=extra)
    return head + _yaml({'Collections': cols, 'Models': entries})


def weights_tables(configs: Sequence['GeneratedConfig'], counts: Optional[CountsLookup] = None
                   ) -> Dict[str, List[Dict[str, Any]]]:
    """``{task: metafile entries}`` for every published checkpoint of the generated configs' peers, and the ImageNet
    backbone files (under ``'classification'``).

    Args:
        configs: The generated configs of all four libraries.
        counts: ``(entry name, config text) -> (params, MACs, FLOPs input)`` to reuse known counts; ``None`` or a
            ``None`` answer counts the model.
    """
    by_peer = {(c.library, c.peer): c for c in configs}
    tables: Dict[str, List[Dict[str, Any]]] = {}
    weights = []
    for library in recipes.LIBRARIES:
        found = peers.published_weights(library)
        weights += found
        entries = []
        for w in found:
            gc = by_peer[(library, w.config)]
            entries.append(_model_entry(w, gc, counts(w.name, gc.text) if counts else None))
        tables[recipes.TASKS[library]] = entries
    tables['classification'] += [e for _, e in _backbone_entries(configs, weights)]
    return tables


def committed_counts(root: str) -> CountsLookup:
    """A :data:`CountsLookup` that answers from the metafiles under ``root`` (entry name -> its counts)."""
    known: Dict[str, Tuple[int, int, str]] = {}
    for task in recipes.TASKS.values():
        path = osp.join(root, 'configs', task, 'metafile.yml')
        if not osp.isfile(path):
            continue
        with open(path) as f:
            meta = yaml.safe_load(f) or {}
        for m in meta.get('Models') or []:
            md = m.get('Metadata') or {}
            if {'Parameters', 'FLOPs', 'FLOPs Input'} <= set(md):
                known[m['Name']] = (md['Parameters'], md['FLOPs'], md['FLOPs Input'])
    return lambda name, text: known.get(name)
