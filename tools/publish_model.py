"""Prepares a trained checkpoint for the model zoo and prints its metafile entry.

``python tools/publish_model.py work_dirs/x/epoch_12.pth faster-rcnn_hrnetv2p-w32-1x_coco_20250101
--config configs/detection/faster-rcnn_hrnetv2p-w32-1x_coco.py --url-prefix https://host/path``

keeps only the weights (``state_dict``) and ``meta`` (without the training-only ``rng_state``), drops the
optimizer, scheduler, message hub and EMA state, writes ``OUT_NAME-<first 8 hex digits of sha256>.pth``
atomically (temporary file renamed into place) and prints the ``Models`` entry for ``configs/<task>/metafile.yml``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import os.path as osp
import sys
import tempfile
from typing import Optional

import torch
import yaml

from hrnet_mm.models.checkpoint import CheckpointMismatchError
from hrnet_mm.zoo.hub import load_file

TRAINING_ONLY_META = ('rng_state', 'hook_msgs')
BUFFER_SUFFIXES = ('running_mean', 'running_var', 'num_batches_tracked')


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='trained checkpoint')
    parser.add_argument('out_name', help='output name without hash and .pth (a path prefix)')
    parser.add_argument('--config', default=None, help='config the checkpoint was trained with (configs/<task>/x.py)')
    parser.add_argument('--url-prefix', default='https://example.invalid/hrnet_mm',
                        help='where the file will be published (for the Weights URL)')
    parser.add_argument('--license', default='Apache-2.0')
    return parser.parse_args(argv)


def strip_checkpoint(checkpoint: dict, source: str = 'checkpoint') -> dict:
    """Only ``state_dict`` (tensors, ``module.`` prefix removed) and ``meta`` without training-only state."""
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(f'{source}: expected a checkpoint dict, got {type(checkpoint).__name__}')
    state = checkpoint.get('state_dict', checkpoint)
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointMismatchError(f'{source}: no weights (state_dict) in the checkpoint')
    if all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    meta = {k: v for k, v in (checkpoint.get('meta') or {}).items() if k not in TRAINING_ONLY_META}
    return {'state_dict': state, 'meta': meta}


def publish(src: str, out_name: str) -> str:
    """Writes the stripped checkpoint as ``out_name-<sha8>.pth``; returns the path."""
    stripped = strip_checkpoint(load_file(src, map_location='cpu'), src)
    out_name = out_name[:-len('.pth')] if out_name.endswith('.pth') else out_name
    directory = osp.dirname(osp.abspath(out_name))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=osp.basename(out_name) + '.', suffix='.part', dir=directory)
    os.close(fd)
    try:
        torch.save(stripped, tmp)
        digest = hashlib.sha256(open(tmp, 'rb').read()).hexdigest()
        final = f'{out_name}-{digest[:8]}.pth'
        os.replace(tmp, final)
    except BaseException:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise
    return final


def metafile_entry(path: str, config: Optional[str], url_prefix: str, license: str) -> dict:
    """The metafile ``Models`` entry of a published file (Results are left for the evaluation to fill)."""
    state = torch.load(path, map_location='cpu', weights_only=False)['state_dict']
    params = sum(v.numel() for k, v in state.items() if not k.endswith(BUFFER_SUFFIXES))
    name = osp.basename(path)[:-len('.pth')].rsplit('-', 1)[0]
    digest = hashlib.sha256(open(path, 'rb').read()).hexdigest()
    entry = {'Name': name}
    if config:
        rel = config[config.index('configs/'):] if 'configs/' in config else config
        entry.update({'In Collection': 'hrnet_mm', 'Config': rel})
    entry.update({
        'Metadata': {'Parameters': params},
        'Results': [],
        'Weights': url_prefix.rstrip('/') + '/' + osp.basename(path),
        'SHA256': digest,
        'License': license,
    })
    return entry


def main(argv=None) -> int:
    """Publishes; returns the exit status (1 with one error line on bad input)."""
    args = parse_args(argv)
    try:
        path = publish(args.src, args.out_name)
    except CheckpointMismatchError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    print(f'wrote {path}')
    print(yaml.safe_dump([metafile_entry(path, args.config, args.url_prefix, args.license)], sort_keys=False,
                         width=200), end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
