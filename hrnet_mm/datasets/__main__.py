"""``python -m hrnet_mm.datasets coco OUT_DIR``: writes a synthetic dataset in its real on-disk format."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .synthetic import make_coco_detection


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m hrnet_mm.datasets', description=__doc__)
    parser.add_argument('kind', choices=['coco'], help='coco: COCO instances (boxes and polygon masks)')
    parser.add_argument('out_dir')
    parser.add_argument('--train', type=int, default=16, help='training images (default 16)')
    parser.add_argument('--val', type=int, default=8, help='validation images (default 8)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    files = make_coco_detection(args.out_dir, {'train': args.train, 'val': args.val}, seed=args.seed)
    for split, path in files.items():
        print(f'{split}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
