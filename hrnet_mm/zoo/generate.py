"""Writes hrnet_mm's configs, metafiles and config tables from the installed peer libraries.

For every HRNet config of mmdet, mmsegmentation, mmpose and mmpretrain (:func:`hrnet_mm.zoo.peers.hrnet_configs`)
it writes ``configs/<task>/<peer file name>``: a thin file that inherits the peer's config and applies the rules of
:mod:`hrnet_mm.zoo.recipes`. With the weights table of :mod:`hrnet_mm.zoo.metafiles` it writes
``configs/<task>/metafile.yml``, and the tables of ``configs/README.md``. ``tools/generate_zoo.py`` runs it;
``--check`` reports the files that differ from what is committed, which the test suite runs too, so a new peer
release is one command and a review.
"""
from __future__ import annotations

import os
import os.path as osp
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import metafiles, peers, pyformat, recipes
from .metafiles import CountsLookup

MARKER = '# Written by tools/generate_zoo.py'
HEADER = f'{MARKER} from the rules in hrnet_mm/zoo/recipes.py: edit the rules, not this file.\n'


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
them. `tests/zoo/test_configs.py` builds every config in its task library, loads the state dict of the model that the
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
    tables = metafiles.weights_tables(configs, counts)
    for library in recipes.LIBRARIES:
        task = recipes.TASKS[library]
        papers = peers.collections(library)
        files[f'configs/{task}/metafile.yml'] = metafiles.metafile_text(library, tables[task], papers)
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
