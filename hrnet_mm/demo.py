"""``make demo``: builds hrnet_mm's models through each task library's registry and runs them.

For each of mmdet, mmseg, mmpose and mmpretrain it builds the representation that library uses (HRNetV2p
pyramid, HRNetV2 concat, HRNetV1 high-resolution map, classification head) from a config dict with the
library as default scope, runs one forward pass on a random image and prints what it built.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch

from .registry import build_in_scope
from .utils import count_macs, count_params

TASKS = {
    'mmdet': ('HRNetV2p pyramid (detection)',
              [dict(type='hrnet_mm.HRNet', arch='{arch}'),
               dict(type='hrnet_mm.HRNetV2pNeck', in_channels='{arch}', out_channels=256, num_outs=5)]),
    'mmseg': ('HRNetV2 concat + 1x1 mix (segmentation)',
              [dict(type='hrnet_mm.HRNet', arch='{arch}', upsample_cfg=dict(mode='bilinear')),
               dict(type='hrnet_mm.HRNetV2Neck', in_channels='{arch}', out_channels=-1)]),
    'mmpose': ('HRNetV1 high-resolution map (pose)',
               [dict(type='hrnet_mm.HRNet', arch='{arch}', out_indices=(0,))]),
    'mmpretrain': ('classification head (ImageNet)',
                   [dict(type='hrnet_mm.HRNet', arch='{arch}'),
                    dict(type='hrnet_mm.HRFuseScales', in_channels='{arch}')]),
}


def _fill(cfg: dict, arch: str) -> dict:
    out = {k: (v.format(arch=arch) if isinstance(v, str) else v) for k, v in cfg.items()}
    if out.get('out_channels') == -1:  # the HRNetV2 mix keeps the 15C concatenation width
        from .models import branch_channels
        out['out_channels'] = sum(branch_channels(arch))
    return out


def run(arch: str = 'w18', size: int = 128) -> List[str]:
    """Builds and runs each task's model; returns the printed lines."""
    lines = [f'hrnet_mm demo: {arch}, input 1x3x{size}x{size}, CPU threads {torch.get_num_threads()}']
    header = f'{"library":<11} {"built":<44} {"params":>11} {"GFLOPs":>7} {"ms":>7}  outputs'
    lines += [header, '-' * len(header)]
    x = torch.randn(1, 3, size, size)
    for lib, (what, cfgs) in TASKS.items():
        modules = [build_in_scope(lib, _fill(c, arch)).eval() for c in cfgs]
        model = torch.nn.Sequential(*modules)
        times = []
        with torch.no_grad():
            for _ in range(3):  # the first call pays one-off kernel set-up: report the best of three
                t0 = time.perf_counter()
                outs = model(x)
                times.append(time.perf_counter() - t0)
        ms = min(times) * 1e3
        gflops = count_macs(model, (3, size, size))['total'] / 2 ** 30
        names = ' + '.join(f'{type(m).__module__.split(".")[0]}.{type(m).__name__}' for m in modules)
        shapes = ', '.join('x'.join(map(str, o.shape[1:])) for o in outs)
        lines.append(f'{lib:<11} {names:<44} {count_params(model):>11,} {gflops:>7.2f} {ms:>7.1f}  {shapes}')
        lines.append(f'{"":<11} ({what})')
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='w18', help='backbone preset (default w18)')
    parser.add_argument('--size', type=int, default=128, help='input height and width (default 128)')
    args = parser.parse_args(argv)
    for line in run(args.arch, args.size):
        print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
