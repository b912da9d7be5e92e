"""The ``hrnet-mm`` command (``python -m hrnet_mm.cli``): ``hrnet-mm env`` prints the stack report (see
:mod:`hrnet_mm.cli.env`); ``hrnet-mm list [PATTERN] [--task TASK]`` lists the models that
:func:`hrnet_mm.get_model` and ``tools/infer.py`` take by name, with their task and published metrics."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def list_models(pattern: str, task: Optional[str]) -> int:
    """Prints one line per matching weights-table entry: name, task, the first published metrics."""
    from ..apis import list_models as names
    from ..zoo.weights import load_table

    found = names(pattern if any(c in pattern for c in '*?[') else f'*{pattern}*', task)
    entries = {e.name: e for e in load_table()}
    for name in found:
        entry = entries[name]
        metrics = next(iter(entry.metrics.items()), None)
        shown = '' if metrics is None else f'{metrics[0]}: ' + ', '.join(
            f'{k} {v}' for k, v in list(metrics[1].items())[:2])
        print(f'{name:<64} {entry.task:<15} {shown}')
    print(f'{len(found)} model(s)', file=sys.stderr)
    return 0 if found else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='hrnet-mm', description='hrnet_mm command line')
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('env', help='print the versions of the stack and check that it works')
    listing = sub.add_parser('list', help='list the models by name (get_model, tools/infer.py)')
    listing.add_argument('pattern', nargs='?', default='*', help='part of the name, or shell wildcards')
    listing.add_argument('--task', choices=['detection', 'segmentation', 'pose', 'classification'])
    args = parser.parse_args(argv)
    if args.command == 'env':
        from .env import main as env_main
        return env_main([])
    if args.command == 'list':
        return list_models(args.pattern, args.task)
    return 2


if __name__ == '__main__':
    sys.exit(main())
