"""tools/publish_model.py: strips training state, names the file by its hash, prints the metafile entry."""
from __future__ import annotations

import hashlib
import os.path as osp
import sys

import torch
import yaml
from conftest import ROOT, TINY_EXTRA

from hrnet_mm.models import HRNet

sys.path.insert(0, osp.join(ROOT, 'tools'))
import publish_model  # noqa: E402


def test_publish_strips_optimizer_and_names_by_hash(tmp_path, capsys):
    model = HRNet(extra=dict(TINY_EXTRA))
    src = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in model.state_dict().items()},
                'optimizer': {'state': {}, 'param_groups': []}, 'param_schedulers': [{}],
                'message_hub': {'log_scalars': {}}, 'meta': {'epoch': 1, 'rng_state': {'python': 1}}}, src)
    assert publish_model.main([str(src), str(tmp_path / 'out' / 'tiny_hrnet'),
                               '--config', 'configs/demo/tiny.py', '--url-prefix', 'https://host/zoo']) == 0
    out = capsys.readouterr().out
    written = out.splitlines()[0].split(' ', 1)[1]
    digest = hashlib.sha256(open(written, 'rb').read()).hexdigest()
    assert written.endswith(f'tiny_hrnet-{digest[:8]}.pth')
    ckpt = torch.load(written, weights_only=False)
    assert set(ckpt) == {'state_dict', 'meta'} and ckpt['meta'] == {'epoch': 1}
    assert not list((tmp_path / 'out').glob('*.part'))
    entry = yaml.safe_load(out.split('\n', 1)[1])[0]
    assert entry['Name'] == 'tiny_hrnet' and entry['SHA256'] == digest
    assert entry['Weights'] == f'https://host/zoo/tiny_hrnet-{digest[:8]}.pth'
    assert entry['Metadata']['Parameters'] == sum(p.numel() for p in model.parameters())


def test_publish_refuses_a_corrupt_file(tmp_path, capsys):
    src = tmp_path / 'broken.pth'
    src.write_bytes(b'PK\x03\x04 not really a zip')
    assert publish_model.main([str(src), str(tmp_path / 'x')]) == 1
    err = capsys.readouterr().err
    assert 'broken.pth' in err and 'truncated or corrupt' in err
    assert list(tmp_path.iterdir()) == [src]
