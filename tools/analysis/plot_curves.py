"""Training curves from mmengine's ``vis_data/scalars.json`` logs as one PNG.

Every ``scalars.json`` under WORK_DIR is found; the latest run is plotted (``--all``: every run, overlaid, one
colour per run). Training records (those with a ``loss``) are plotted against the iteration, validation records
(metrics such as ``coco/bbox_mAP``, ``mIoU``, ``accuracy/top1``, ``coco/AP``) against their ``step`` (the epoch for
epoch-based loops, the iteration for iteration-based ones). Default keys: ``loss``, ``lr`` and every metric found.

Examples::

    python tools/analysis/plot_curves.py work_dirs/fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes --out curves.png
    python tools/analysis/plot_curves.py work_dirs/faster-rcnn_demo --keys loss lr coco/bbox_mAP --out det.png
    python tools/analysis/plot_curves.py work_dirs/td-hm_demo --all --out all_runs.png
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

# Bookkeeping fields of mmengine's scalar records; never plotted as metrics.
META_KEYS = {'step', 'iter', 'epoch', 'time', 'data_time', 'memory', 'lr', 'base_lr'}

Series = Dict[str, Tuple[List[float], List[float]]]


def find_logs(work_dir: str, all_runs: bool = False) -> List[Path]:
    """The ``scalars.json`` files under ``work_dir``: the latest one (by run timestamp, then mtime), or all.

    Raises:
        FileNotFoundError: When ``work_dir`` or any log is missing.
    """
    root = Path(work_dir)
    if not root.is_dir():
        raise FileNotFoundError(f'work dir not found: {work_dir}')
    logs = sorted(root.rglob('scalars.json'), key=lambda p: (p.parent.parent.name, p.stat().st_mtime))
    logs = [p for p in logs if p.stat().st_size > 0]
    if not logs:
        raise FileNotFoundError(f'no scalars.json (mmengine vis_data log) under {work_dir}')
    return logs if all_runs else logs[-1:]


def read_log(path: Path) -> Series:
    """``{key: (xs, ys)}`` from one scalars.json (one JSON record per line; malformed lines are skipped)."""
    series: Series = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        train = any(k == 'loss' or k.startswith('loss') for k in rec)
        x = rec.get('iter', rec.get('step')) if train else rec.get('step', rec.get('epoch'))
        if x is None:
            continue
        for k, v in rec.items():
            if k in META_KEYS - {'lr', 'base_lr'} or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(float(x))
            ys.append(float(v))
    return series


def default_keys(all_series: List[Series]) -> List[str]:
    """``loss``, ``lr`` and every other metric (keys without ``loss`` and not bookkeeping) found."""
    found: List[str] = []
    for s in all_series:
        for k in s:
            if k not in found:
                found.append(k)
    keys = [k for k in ('loss', 'lr') if k in found]
    keys += [k for k in found if k not in META_KEYS and 'loss' not in k and k not in keys]
    return keys


def plot(logs: List[Path], keys: Optional[List[str]], out: str) -> List[str]:
    """Plots ``keys`` of ``logs`` into ``out`` (one subplot per key) and returns the keys plotted.

    Raises:
        ValueError: When none of ``keys`` is in the logs.
    """
    all_series = [read_log(p) for p in logs]
    wanted = keys or default_keys(all_series)
    missing = [k for k in wanted if not any(k in s for s in all_series)]
    present = [k for k in wanted if k not in missing]
    if missing and keys:
        print(f'plot_curves.py: warning: not in the logs: {", ".join(missing)}', file=sys.stderr)
    if not present:
        found = sorted({k for s in all_series for k in s})
        raise ValueError(f'none of {wanted} found in the logs (keys there: {", ".join(found) or "none"})')
    cols = min(3, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, present):
        for path, s in zip(logs, all_series):
            if key not in s:
                continue
            xs, ys = s[key]
            label = path.parent.parent.name if len(logs) > 1 else None
            ax.plot(xs, ys, marker='o' if len(xs) < 30 else None, markersize=3, label=label)
        train = 'loss' in key or key in ('lr', 'base_lr')
        ax.set_xlabel('iteration' if train else 'step (epoch, or iteration for iteration-based loops)')
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if key in ('lr', 'base_lr'):
            ax.ticklabel_format(axis='y', style='sci', scilimits=(-3, 3))
        if len(logs) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(present):]:
        ax.axis('off')
    fig.suptitle(', '.join(str(p) for p in logs) if len(logs) == 1 else f'{len(logs)} runs', fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return present


def main(argv=None) -> List[str]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__[__doc__.index('Examples::'):])
    parser.add_argument('work_dir', help='an mmengine work dir (searched recursively for scalars.json)')
    parser.add_argument('--keys', nargs='+', help='keys to plot (default: loss, lr and every metric found)')
    parser.add_argument('--all', action='store_true', help='plot every run found, not only the latest')
    parser.add_argument('--out', default='curves.png', help='output PNG (default curves.png)')
    args = parser.parse_args(argv)
    try:
        logs = find_logs(args.work_dir, args.all)
        plotted = plot(logs, args.keys, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f'plot_curves.py: error: {e}', file=sys.stderr)
        sys.exit(1)
    print(f'{args.out}: {", ".join(plotted)} from {len(logs)} log(s)')
    return plotted


if __name__ == '__main__':
    main()
