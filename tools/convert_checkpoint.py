"""Converts HRNet checkpoints between the published layouts and hrnet_mm's configs.

Examples::

    # official / timm ImageNet weights -> hrnet_mm classification config (mmpretrain head layout, biases folded)
    python tools/convert_checkpoint.py hrnetv2_w18.pth w18_in1k.pth --from official --to hrnet_mm
    # an ImageNet classifier trained with hrnet_mm -> timm / the official layout
    python tools/convert_checkpoint.py epoch_100.pth hrnet_w18_timm.pth --from hrnet_mm --to timm

When the keys already match (mmdet, mmseg, mmpose and mmpretrain models <-> hrnet_mm configs, which keep the
peers' layouts) the tool says so and writes nothing unless ``--force`` is given. SRC may be a path, URL,
``open-mmlab://`` or ``hrnet_mm://`` name.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import tempfile

import torch

from hrnet_mm.models.checkpoint import CheckpointMismatchError
from hrnet_mm.zoo.convert import FORMATS, HEAD_LAYOUTS, changed, convert_checkpoint
from hrnet_mm.zoo.hub import load_file


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='checkpoint to convert (path, URL, open-mmlab:// or hrnet_mm:// name)')
    parser.add_argument('dst', help='file to write')
    parser.add_argument('--from', dest='src_format', required=True, choices=FORMATS)
    parser.add_argument('--to', dest='dst_format', required=True, choices=FORMATS)
    parser.add_argument('--head-layout', choices=HEAD_LAYOUTS, default=None,
                        help='hrnet_mm classification head layout to produce (default: mmpretrain for official/timm '
                             'sources, as in hrnet_mm\'s configs; otherwise the source\'s)')
    parser.add_argument('--force', action='store_true', help='write DST even when nothing changed')
    return parser.parse_args(argv)


def save_atomic(obj, path: str) -> None:
    """``torch.save`` into a temporary file next to ``path``, renamed into place when complete."""
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=osp.basename(path) + '.', suffix='.part', dir=directory)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    """Runs the conversion; returns the exit status (1 with one error line on bad input)."""
    args = parse_args(argv)
    try:
        if args.src.startswith('hrnet_mm://'):
            from hrnet_mm.zoo.hub import load_from_hrnet_mm
            checkpoint = load_from_hrnet_mm(args.src, map_location='cpu')
        else:
            checkpoint = load_file(args.src, map_location='cpu')
        out, notes = convert_checkpoint(checkpoint, args.src_format, args.dst_format, head=args.head_layout,
                                        source=args.src)
    except (CheckpointMismatchError, ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    for note in notes:
        print(note)
    if not changed(notes) and not args.force:
        print(f'{args.dst} not written (pass --force to write a copy)')
        return 0
    save_atomic(out, args.dst)
    n = len(out.get('state_dict', out)) if isinstance(out, dict) else 0
    print(f'wrote {args.dst} ({n} tensors, {args.dst_format} layout)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
