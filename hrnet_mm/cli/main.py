"""The ``hrnet-mm`` command: ``hrnet-mm env`` prints the stack report (see :mod:`hrnet_mm.cli.env`)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='hrnet-mm', description='hrnet_mm command line')
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('env', help='print the versions of the stack and check that it works')
    args = parser.parse_args(argv)
    if args.command == 'env':
        from .env import main as env_main
        return env_main([])
    return 2


if __name__ == '__main__':
    sys.exit(main())
