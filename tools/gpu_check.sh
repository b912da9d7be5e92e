#!/usr/bin/env bash
# The CUDA measurements of issue 7 in one run on a GPU machine, for a machine without network access that has
# PyTorch and timm but no OpenMMLab packages. First, where PyPI is reachable: `bash tools/fetch_gpu_wheels.sh`
# (writes .whl/); send .whl/ along with the checkout; then there: `bash tools/gpu_check.sh [PART ...]`.
#
# It installs the wheels into a scratch folder (mmengine, and mmcv without compiled ops: enough for hrnet_mm and
# timm; mmdet, mmseg, mmpose and mmpretrain need mmcv's ops, so timm is the peer: its HRNet runs the same
# operations as theirs) and runs the PARTs (default: all three):
#   tests  tests/deploy/test_cuda.py: the deploy model on CUDA, bf16 autocast, branch streams, CUDA graphs (~2 min)
#   fp32   tools/benchmark.py --device cuda: W32 256x192 batch 32 and batch 1, inference, fp32 (~1 min)
#   bf16   the same with bf16 autocast and channels_last for every row, plus the compiled deploy model, the
#          branch-streams model and the CUDA-graphs model (compiles; ~6 min)
# Logs and JSON go to $OUT (default gpu_out/); the exit status is non-zero if any part failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-gpu_out}"
PY="${PYTHON:-python3}"
parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(tests fp32 bf16)
mkdir -p "$OUT"
if [[ -d .whl ]]; then
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit 1
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
"$PY" - <<'PY' 2>&1 | tee "$OUT/env.log" || exit 1
import torch
import hrnet_mm
assert torch.cuda.is_available(), 'gpu_check: torch sees no CUDA device'
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(),
      'device', torch.cuda.get_device_name(), 'hrnet_mm', hrnet_mm.__version__)
PY
status=0
bench() { "$PY" tools/benchmark.py --device cuda --mode infer --peers timm --cases w32-pose-b32 w32-pose-b1 \
            --repeats 20 --warmup 3 "$@"; }
for part in "${parts[@]}"; do
  echo "== gpu_check: $part"
  case "$part" in
    tests) "$PY" -m pytest -q -p no:cacheprovider tests/deploy/test_cuda.py 2>&1 | tee "$OUT/tests.log" || status=1 ;;
    fp32) bench --json "$OUT/bench_fp32.json" 2>&1 | tee "$OUT/bench_fp32.log" || status=1 ;;
    bf16) bench --dtype bf16 --channels-last --compile --branch-streams --cuda-graphs --json "$OUT/bench_bf16.json" \
            2>&1 | tee "$OUT/bench_bf16.log" || status=1 ;;
    *) echo "gpu_check: unknown part '$part' (tests, fp32, bf16)" >&2; status=2 ;;
  esac
done
exit $status
