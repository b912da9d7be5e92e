"""Writes hrnet_mm's configs, metafiles and config tables from the installed peer libraries.

For every HRNet config of mmdet, mmsegmentation, mmpose and mmpretrain (:func:`hrnet_mm.zoo.peers.hrnet_configs`)
it writes ``configs/<task>/<peer file name>``: a thin file that inherits the peer's config and applies the rules of
:mod:`hrnet_mm.zoo.recipes`. For every checkpoint that the peers publish for those configs, and for the ImageNet
backbone files they start from, it writes an entry of ``configs/<task>/metafile.yml`` (name, config, URL, hash
prefix, published metrics, parameters and FLOPs of the model the config builds, source, license), and the tables of
``configs/README.md``. ``tools/generate_zoo.py`` runs it; ``--check`` reports the files that differ from what is
committed, which the test suite runs too, so a new peer release is one command and a review.
"""
from __future__ import annotations

import functools
import json
import os
import os.path as osp
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from . import peers, pyformat, recipes

MARKER = '# Written by tools/generate_zoo.py'
HEADER = f'{MARKER} from the rules in hrnet_mm/zoo/recipes.py: edit the rules, not this file.\n'
PAPER = dict(Title='Deep High-Resolution Representation Learning for Visual Recognition',
             URL='https://arxiv.org/abs/1908.07919')


@dataclass
class GeneratedConfig:
    """One generated config.

    Attributes:
        library: The peer library.
        peer: The peer config it inherits, relative to the library's config root.
        path: Its path in the repository (``configs/<task>/<name>.py``).
        text: The file's source.
    """

    library: str
    peer: str
    path: str
    text: str

    @property
    def task(self) -> str:
        return recipes.TASKS[self.library]

    @property
    def name(self) -> str:
        return osp.splitext(osp.basename(self.path))[0]

    @property
    def base(self) -> str:
        """The ``_base_`` string: ``'<library>::<peer path>'``."""
        return f'{self.library}::{self.peer}'


def config_path(library: str, peer: str) -> str:
    """Where the hrnet_mm config of the peer config ``peer`` lives: ``configs/<task>/<peer's file name>``."""
    return f'configs/{recipes.TASKS[library]}/{osp.basename(peer)}'


def config_text(library: str, peer: str) -> str:
    """The source of the hrnet_mm config that runs the peer config ``peer`` with hrnet_mm's modules."""
    cfg = peers.load_config(library, peer)
    overrides, notes = recipes.model_overrides(library, cfg.to_dict()['model'])
    if cfg.get('custom_imports'):
        raise recipes.RuleError(f'{library}::{peer} has custom_imports, which the rules do not merge')
    version = peers.library_version(library)
    return (f"# {library} {version}'s {osp.basename(peer)} with hrnet_mm's modules.\n"
            + HEADER
            + _base_line(f'{library}::{peer}')
            + "custom_imports = dict(imports=['hrnet_mm'], allow_failed_imports=False)\n"
            + pyformat.assignment('model', overrides, notes))


def _base_line(base: str) -> str:
    line = f"_base_ = '{base}'\n"
    if len(line) <= pyformat.WIDTH + 1:
        return line
    head, tail = base.rsplit('/', 1)  # two adjacent literals: one string for Python and mmengine alike
    return f"_base_ = ('{head}/'\n          '{tail}')\n"


def generate_configs(libraries: Sequence[str] = recipes.LIBRARIES) -> List[GeneratedConfig]:
    """Every generated config of ``libraries``, sorted by path."""
    out = []
    for library in libraries:
        for peer in peers.hrnet_configs(library):
            out.append(GeneratedConfig(library, peer, config_path(library, peer), config_text(library, peer)))
    paths = [c.path for c in out]
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        raise recipes.RuleError(f'two peer configs map to the same hrnet_mm config: {dupes}')
    return sorted(out, key=lambda c: c.path)


# ----------------------------------------------------------------------------------------------- weights table

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


def _model_entry(w: peers.PeerWeights, gc: GeneratedConfig, counts: Optional[Tuple[int, int, str]] = None
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
    from .weights import hash_prefix_from_url
    entry = {'Name': w.name, 'In Collection': w.collection or 'HRNet', 'Config': gc.path, 'Metadata': metadata,
             'Results': w.results, 'Weights': w.url}
    prefix = hash_prefix_from_url(w.url)
    if prefix:
        entry['Hash Prefix'] = prefix
    entry['Converted From'] = {k: v for k, v in source.items() if v}
    entry['License'] = _license(w.library)
    return entry


def _backbone_entries(configs: Sequence[GeneratedConfig], weights: Sequence[peers.PeerWeights]
                      ) -> List[Tuple[str, Dict[str, Any]]]:
    """(task, entry) of every ImageNet file the configs start from; full-model checkpoints of the table are not
    ImageNet files and are skipped."""
    from mmengine.runner.checkpoint import get_external_models

    from .weights import hash_prefix_from_url
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


CountsLookup = Callable[[str, str], Optional[Tuple[int, int, str]]]


def weights_tables(configs: Sequence[GeneratedConfig], counts: Optional[CountsLookup] = None
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


README_INTRO = """# Task configs

One hrnet_mm config for every HRNet config that mmdet {mmdet}, mmsegmentation {mmseg}, mmpose {mmpose} and
mmpretrain {mmpretrain} ship, with the peer's file name: `configs/<task>/<peer file name>`. Each one inherits the
peer's config whole (`_base_ = 'mmpose::...'`) and swaps in hrnet_mm's modules: `hrnet_mm.HRNet` for the backbone,
`hrnet_mm.HRNetV2pNeck` for mmdet's `HRFPN`, `hrnet_mm.HRNetV2Neck` for mmpose's concatenating
`FeatureMapProcessor`, `hrnet_mm.HRFuseScales` for mmpretrain's. The peers' hidden defaults that differ from
hrnet_mm's are written out (mmdet's `norm_eval=True`, mmseg's bilinear fusion, mmpose's stride-4-only output and
initialisation). Data, pipelines, heads, schedules and runtime settings are the peer's, and so are the state-dict keys:
every published checkpoint below loads with `strict=True`, as a plain file or by name (`hrnet_mm://<weights>`).

The files are written by `tools/generate_zoo.py` from the rules in `hrnet_mm/zoo/recipes.py` and the peers' installed
configs and metafiles (`python tools/generate_zoo.py --check` lists what a new peer release changes); do not edit
them. `tests/test_configs.py` builds every config in its task library, loads the state dict of the model that the
peer's own config builds with `strict=True` and checks that both give the same outputs.

Run one with the library's tools or hrnet_mm's, e.g.
`mim train mmpose configs/pose/td-hm_hrnet-w32_dark-8xb64-210e_coco-256x192.py --gpus 8 --launcher pytorch` or
`python tools/train.py configs/segmentation/ocrnet_hr48_4xb2-160k_cityscapes-512x1024.py`, and inherit one as
`_base_ = 'hrnet_mm::pose/td-hm_hrnet-w32_dark-8xb64-210e_coco-256x192.py'`. The `{{gpus}}xb{{batch}}` part of a
name is the published setup; with another total batch size, scale the learning rate (`--auto-scale-lr`).

**Metrics are the published numbers of the peer's checkpoint (its metafile), not measured here.** `-`: the peer
publishes no checkpoint for the config. `configs/demo/` holds hrnet_mm's own small demo configs (`make demo`).
"""

TASK_TITLES = {'detection': 'Detection (mmdet)', 'segmentation': 'Semantic segmentation (mmseg)',
               'pose': 'Pose estimation (mmpose)', 'classification': 'Image classification (mmpretrain)'}


def _metric_text(results: Sequence[Dict[str, Any]]) -> str:
    """The first two metrics of each dataset: ``COCO: box AP 41.6, mask AP 36.4``."""
    by_dataset: Dict[str, List[str]] = {}
    for r in results:
        shown = by_dataset.setdefault(str(r.get('Dataset')), [])
        shown += [f'{k} {v}' for k, v in list((r.get('Metrics') or {}).items())[:2 - len(shown)]]
    return '; '.join(f'{d}: ' + ', '.join(m) for d, m in by_dataset.items())


def readme_text(configs: Sequence[GeneratedConfig], tables: Dict[str, List[Dict[str, Any]]]) -> str:
    """``configs/README.md``: what the configs are, then one table a task."""
    versions = {lib: peers.library_version(lib) for lib in recipes.LIBRARIES}
    out = [README_INTRO.format(**versions)]
    for task, title in TASK_TITLES.items():
        rows = [c for c in configs if c.task == task]
        entries: Dict[str, List[Dict[str, Any]]] = {}
        for e in tables.get(task, []):
            entries.setdefault(e['Config'], []).append(e)
        out.append(f'\n## {title}: {len(rows)} configs\n\n| config | peer config | weights | published metrics |\n'
                   '|---|---|---|---|\n')
        for c in rows:
            found = [e for e in entries.get(c.path, []) if not e['Name'].startswith('imagenet/')] or [None]
            for e in found:
                weights = f'`{e["Name"]}`' if e else '-'
                metric = _metric_text(e['Results']) if e else ''
                out.append(f'| {c.name}.py | {c.peer} | {weights} | {metric} |\n')
    return ''.join(out)


def expected_files(counts: Optional[CountsLookup] = None) -> Dict[str, str]:
    """``{repository path: text}`` of every file the tool writes."""
    configs = generate_configs()
    files = {c.path: c.text for c in configs}
    tables = weights_tables(configs, counts)
    for library in recipes.LIBRARIES:
        task = recipes.TASKS[library]
        files[f'configs/{task}/metafile.yml'] = metafile_text(library, tables[task], peers.collections(library))
    files['configs/README.md'] = readme_text(configs, tables)
    return files


def is_generated(path: str) -> bool:
    """Whether the config file ``path`` was written by the tool (its marker in the first lines)."""
    with open(path) as f:
        return any(line.startswith(MARKER) for line in f.read(2000).splitlines()[:3])


def generated_files_on_disk(root: str) -> List[str]:
    """The repository paths of the files that the tool wrote under ``root``: configs with its marker, the task
    metafiles and ``configs/README.md`` (those it may replace or remove)."""
    found = []
    for task in recipes.TASKS.values():
        folder = osp.join(root, 'configs', task)
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = osp.join(dirpath, name)
                rel = osp.relpath(path, root).replace(os.sep, '/')
                if name == 'metafile.yml' or name.endswith('.py') and is_generated(path):
                    found.append(rel)
    if osp.isfile(osp.join(root, 'configs', 'README.md')):
        found.append('configs/README.md')
    return sorted(found)


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


def differences(root: str, files: Dict[str, str]) -> Tuple[List[str], List[str], List[str]]:
    """(files to add, files that differ, files to remove) of ``root`` against ``files``."""
    on_disk = set(generated_files_on_disk(root))
    add, change = [], []
    for path, text in sorted(files.items()):
        full = osp.join(root, path)
        if not osp.isfile(full):
            add.append(path)
        else:
            with open(full) as f:
                if f.read() != text:
                    change.append(path)
    remove = sorted(on_disk - set(files))
    return add, change, remove


def write(root: str, files: Dict[str, str]) -> Tuple[List[str], List[str], List[str]]:
    """Writes ``files`` under ``root`` and removes the generated files no longer expected; returns
    :func:`differences` as they were before writing."""
    add, change, remove = differences(root, files)
    for path in add + change:
        full = osp.join(root, path)
        os.makedirs(osp.dirname(full), exist_ok=True)
        with open(full, 'w') as f:
            f.write(files[path])
    for path in remove:
        os.unlink(osp.join(root, path))
    for task in recipes.TASKS.values():  # folders emptied by the removals
        for dirpath, _, _ in sorted(os.walk(osp.join(root, 'configs', task)), reverse=True):
            if not os.listdir(dirpath):
                os.rmdir(dirpath)
    return add, change, remove
