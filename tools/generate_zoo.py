"""Write hrnet_mm's configs, weights table and config tables from the installed peer libraries.

For every HRNet config of mmdet, mmsegmentation, mmpose and mmpretrain it writes ``configs/<task>/<peer file>``,
for every checkpoint the peers publish for them (and the ImageNet files they start from) an entry of
``configs/<task>/metafile.yml``, and the tables of ``configs/README.md``; generated files that are no longer
expected are removed. The rules live in ``hrnet_mm/zoo/recipes.py``; see ``hrnet_mm/zoo/generate.py``.

Examples::

    python tools/generate_zoo.py                  # write (counting every model's parameters and FLOPs: minutes)
    python tools/generate_zoo.py --reuse-counts   # write, taking known counts from the committed metafiles
    python tools/generate_zoo.py --check          # list what would change; exit status 1 if anything would

A library that is not installed, or a peer config that the rules do not cover, is one line ``generate_zoo.py:
error: ...`` with exit status 2 (``--debug`` for the traceback).
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
import warnings
from typing import List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write hrnet_mm's configs and weights table from the installed "
                                     'mmdet, mmsegmentation, mmpose and mmpretrain')
    parser.add_argument('--check', action='store_true', help='write nothing; list the files that would change and '
                        'exit with status 1 if any would (counts are taken from the committed metafiles)')
    parser.add_argument('--reuse-counts', action='store_true',
                        help="take each entry's parameters and FLOPs from the committed metafile where it has them")
    parser.add_argument('--root', default=ROOT, help='repository root (default: this checkout)')
    parser.add_argument('--debug', action='store_true', help='show tracebacks')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings('ignore')  # the peers' deprecation notices while their configs are parsed and built
    from hrnet_mm.zoo import generate, metafiles, peers, recipes
    try:
        for library in recipes.LIBRARIES:  # all four first: a missing one is named before anything is parsed
            peers.config_root(library)
            peers.library_version(library)
        counts = metafiles.committed_counts(args.root) if args.check or args.reuse_counts else None
        files = generate.expected_files(counts)
    except (peers.LibraryNotInstalled, recipes.RuleError) as exc:
        if args.debug:
            raise
        print(f'generate_zoo.py: error: {exc}', file=sys.stderr)
        return 2
    if args.check:
        add, change, remove = generate.differences(args.root, files)
    else:
        add, change, remove = generate.write(args.root, files)
    verb = ('would ' if args.check else '')
    for label, paths in (('add', add), ('update', change), ('remove', remove)):
        for path in paths:
            print(f'{verb}{label} {path}')
    configs = sum(1 for p in files if p.endswith('.py'))
    print(f'{configs} configs, {len(add)} to add, {len(change)} to update, {len(remove)} to remove'
          + (' (nothing written)' if args.check else ''))
    return 1 if args.check and (add or change or remove) else 0


if __name__ == '__main__':
    sys.exit(main())
