"""Side-by-side speed of hrnet_mm's HRNet and the peers' HRNets (mmdet, mmseg, mmpose, mmpretrain, timm).

Every implementation of a case is built with the same weights (the peer's state dict is loaded into hrnet_mm
with ``strict=True``); their outputs are checked to agree before anything is timed. Then each is timed in the
same process, interleaved round by round so that machine noise hits all alike, and the table reports the
median latency, throughput, peak memory (CUDA) and the speed ratio to the fastest peer (> 1: faster).

Implementations:
  hrnet_mm            the training-ready module (what configs build), eval mode
  hrnet_mm-deploy     :func:`hrnet_mm.deploy.to_deploy`: BN folded, channels_last (``--compile`` adds torch.compile)
  mmdet, mmseg, mmpose, mmpretrain, timm   the peers' backbones (mmseg fuses with bilinear upsampling, so
                      hrnet_mm is compared with it in its bilinear setting)

Modes: ``infer`` (no grad, eval) and ``train`` (forward + backward + SGD step, train mode, as a runner does).

Examples::

    python tools/benchmark.py                                  # the default cases, CPU, fp32
    python tools/benchmark.py --cases w32-pose-b1 --mode infer --repeats 20 --json out.json
    python tools/benchmark.py --device cuda --dtype bf16 --channels-last
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hrnet_mm  # noqa: E402
from hrnet_mm.deploy import to_deploy  # noqa: E402
from hrnet_mm.models import HRNet  # noqa: E402
from hrnet_mm.models.arch import get_preset  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    arch: str
    height: int
    width: int
    batch: int
    modes: Tuple[str, ...] = ('infer',)


CASES = {c.name: c for c in [
    Case('w32-pose-b1', 'w32', 256, 192, 1, ('infer', 'train')),
    Case('w32-pose-b32', 'w32', 256, 192, 32, ('infer', 'train')),
    Case('w18-seg-b1', 'w18', 512, 1024, 1, ('infer', 'train')),
    Case('w48-seg-b1', 'w48', 512, 1024, 1, ('infer', 'train')),
    Case('w32-det-b1', 'w32', 800, 1333, 1, ('infer', 'train')),
    Case('w18-train-b2', 'w18', 256, 256, 2, ('train',)),
]}
DEFAULT_CASES = ['w32-pose-b1', 'w18-seg-b1', 'w18-train-b2']  # the rest: --cases, they take minutes on CPU
PEERS = ['mmdet', 'mmseg', 'mmpose', 'mmpretrain', 'timm']


def _extra(arch: str) -> dict:
    return {f'stage{k + 1}': s.to_extra() for k, s in enumerate(get_preset(arch))}


def build_peer(name: str, arch: str) -> nn.Module:
    """The peer's backbone returning all four branches."""
    from hrnet_mm.registry import build_in_scope
    if name == 'timm':
        import timm
        return timm.create_model(f'hrnet_{arch}', pretrained=False, features_only=True, feature_location='',
                                 out_indices=(1, 2, 3, 4))
    extra = _extra(arch)
    if name == 'mmpose':
        extra['stage4']['multiscale_output'] = True
    cfg = dict(type='HRNet', arch=arch) if name == 'mmpretrain' else dict(type='HRNet', extra=extra)
    if name == 'mmdet':
        cfg['norm_eval'] = False  # train-mode BN like the others
    return build_in_scope(name, cfg)


def _randomize(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if name.endswith('running_var') or (t.dim() == 1 and name.endswith('weight')):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif t.dim() == 1:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)


def build_impls(case: Case, names: List[str], compile_deploy: bool) -> Dict[str, nn.Module]:
    """Peers with random weights, and hrnet_mm with the same weights (strict load)."""
    impls: Dict[str, nn.Module] = {}
    reference = None
    for name in names:
        if name.startswith('hrnet_mm'):
            continue
        try:
            peer = build_peer(name, case.arch)
        except Exception as exc:  # noqa: BLE001 - a missing peer is reported, not fatal
            print(f'  skipping {name}: {type(exc).__name__}: {exc}', file=sys.stderr)
            continue
        if reference is None:
            _randomize(peer)
            reference = {k: v for k, v in peer.state_dict().items()}
        else:
            peer.load_state_dict({k: v for k, v in reference.items() if k in peer.state_dict()}, strict=False)
        impls[name] = peer
    if reference is None:
        raise SystemExit('no peer could be built')
    ours = HRNet(arch=case.arch)
    ours.load_state_dict({k: v for k, v in reference.items() if k in ours.state_dict()}, strict=True)
    if 'hrnet_mm' in names:
        impls['hrnet_mm'] = ours
    if 'mmseg' in impls:
        impls['hrnet_mm-bilinear'] = copy.deepcopy(ours)
        for m in impls['hrnet_mm-bilinear'].modules():
            if hasattr(m, 'upsample_mode'):
                m.upsample_mode, m.align_corners = 'bilinear', False
    if 'hrnet_mm-deploy' in names:
        impls['hrnet_mm-deploy'] = to_deploy(ours.eval(), compile=compile_deploy)
    return impls


def _outputs(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def check_agreement(impls: Dict[str, nn.Module], x: torch.Tensor, tol: float = 1e-4) -> Dict[str, float]:
    """Max relative error of each implementation's outputs against hrnet_mm's (mmseg against bilinear)."""
    errs = {}
    with torch.no_grad():
        for m in impls.values():
            m.eval()
        ref = _outputs(impls['hrnet_mm'], x)
        ref_bilinear = _outputs(impls['hrnet_mm-bilinear'], x) if 'hrnet_mm-bilinear' in impls else None
        for name, m in impls.items():
            base = ref_bilinear if name in ('mmseg', 'hrnet_mm-bilinear') else ref
            outs = _outputs(m, x.contiguous(memory_format=torch.channels_last) if 'deploy' in name else x)
            err = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                      for a, b in zip(outs, base))
            errs[name] = err
            if err > tol:
                raise SystemExit(f'{name} disagrees with hrnet_mm: relative error {err:.2e} > {tol}')
    return errs


def _timer(device: torch.device) -> Callable[[], float]:
    if device.type == 'cuda':
        def now() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
        return now
    return time.perf_counter


def make_step(name: str, model: nn.Module, x: torch.Tensor, mode: str, autocast: Optional[torch.dtype],
              device: torch.device) -> Callable[[], None]:
    """One timed unit of work: a forward (infer) or forward+backward+SGD step (train)."""
    if 'deploy' in name or mode == 'infer':
        model.eval()
        if 'deploy' in name:
            x = x.contiguous(memory_format=torch.channels_last)

        def infer() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                _outputs(model, x)
        return infer
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def train() -> None:
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = sum(o.float().square().mean() for o in _outputs(model, x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return train


@dataclass
class Row:
    case: str
    mode: str
    impl: str
    median_ms: float
    throughput: float
    peak_mem_mb: Optional[float]
    ratio_to_fastest_peer: float = 0.0
    rel_err: Optional[float] = None


def run_case(case: Case, mode: str, args: argparse.Namespace, device: torch.device) -> List[Row]:
    names = ['hrnet_mm', *args.peers] + (['hrnet_mm-deploy'] if mode == 'infer' else [])
    impls = build_impls(case, names, args.compile)
    x = torch.randn(case.batch, 3, case.height, case.width)
    check_x = x[:1] if case.batch > 1 else x
    errs = check_agreement(impls, check_x)
    impls.pop('hrnet_mm-bilinear', None)
    if args.channels_last:
        impls = {k: v.to(memory_format=torch.channels_last) for k, v in impls.items()}
        x = x.contiguous(memory_format=torch.channels_last)
    impls = {k: v.to(device) for k, v in impls.items()}
    x = x.to(device)
    autocast = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.dtype]
    steps = {k: make_step(k, m, x, mode, autocast, device) for k, m in impls.items()}
    now = _timer(device)
    prep = {}
    for k, step in steps.items():  # warm-up (and compile time of the deploy model)
        t0 = now()
        step()
        prep[k] = now() - t0
        for _ in range(args.warmup - 1):
            step()
    times: Dict[str, List[float]] = {k: [] for k in steps}
    peak: Dict[str, Optional[float]] = {k: None for k in steps}
    for _ in range(args.repeats):  # interleaved rounds: noise hits every implementation alike
        for k, step in steps.items():
            if device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats()
            t0 = now()
            step()
            times[k].append(now() - t0)
            if device.type == 'cuda':
                peak[k] = max(peak[k] or 0, torch.cuda.max_memory_allocated() / 2 ** 20)
    rows = []
    for k in steps:
        med = statistics.median(times[k])
        rows.append(Row(case.name, mode, k, med * 1e3, case.batch / med, peak[k], rel_err=errs.get(k)))
    fastest_peer = min((r.median_ms for r in rows if r.impl in PEERS), default=None)
    for r in rows:
        r.ratio_to_fastest_peer = fastest_peer / r.median_ms if fastest_peer else float('nan')
    if 'hrnet_mm-deploy' in prep:
        print(f'  {case.name}: hrnet_mm-deploy first call (preparation{" + compile" if args.compile else ""}): '
              f'{prep["hrnet_mm-deploy"]:.2f} s', file=sys.stderr)
    return rows


def environment(device: torch.device) -> Dict[str, str]:
    import mmengine
    info = dict(python=platform.python_version(), torch=torch.__version__, mmengine=mmengine.__version__,
                hrnet_mm=hrnet_mm.__version__, machine=platform.machine(), processor=platform.processor() or '?',
                threads=str(torch.get_num_threads()), device=str(device))
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def format_table(rows: List[Row]) -> str:
    head = f'{"case":<14} {"mode":<6} {"impl":<16} {"median ms":>10} {"img/s":>8} {"peak MB":>8} ' \
           f'{"vs fastest peer":>15} {"rel err":>8}'
    lines = [head, '-' * len(head)]
    for r in rows:
        mem = f'{r.peak_mem_mb:.0f}' if r.peak_mem_mb is not None else '-'
        err = f'{r.rel_err:.0e}' if r.rel_err is not None else '-'
        lines.append(f'{r.case:<14} {r.mode:<6} {r.impl:<16} {r.median_ms:>10.1f} {r.throughput:>8.2f} {mem:>8} '
                     f'{r.ratio_to_fastest_peer:>14.2f}x {err:>8}')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--cases', nargs='+', default=DEFAULT_CASES, choices=sorted(CASES))
    parser.add_argument('--mode', choices=['infer', 'train', 'both'], default='both')
    parser.add_argument('--peers', nargs='+', default=PEERS, choices=PEERS)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', choices=['fp32', 'bf16', 'fp16'], default='fp32', help='autocast dtype')
    parser.add_argument('--channels-last', action='store_true', help='run every implementation channels_last')
    parser.add_argument('--compile', action='store_true', help='torch.compile the deploy model')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument('--json', help='also write the rows and the environment as JSON here')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment(device)
    print('  '.join(f'{k}={v}' for k, v in env.items()))
    print(f'repeats={args.repeats} warmup={args.warmup} dtype={args.dtype} channels_last={args.channels_last}')
    rows: List[Row] = []
    modes = ['infer', 'train'] if args.mode == 'both' else [args.mode]
    for name in args.cases:
        case = CASES[name]
        for mode in (m for m in modes if m in case.modes):
            print(f'  running {name} {mode} ...', file=sys.stderr, flush=True)
            rows += run_case(case, mode, args, device)
    print(format_table(rows))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(environment=env, args=vars(args), rows=[asdict(r) for r in rows]), f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
