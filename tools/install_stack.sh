#!/usr/bin/env bash
# Installs the pinned hrnet_mm stack into .venv at the repository root.
#
# Called by `make install` (and so by `make test` and `make demo`). It is idempotent: a stamp in
# .venv records a hash of every file that decides what is installed, and a second run with an
# unchanged stamp returns at once. The one slow step, building mmcv 2.1.0 with its compiled ops,
# is done once per (mmcv, torch, Python) triple; the wheel is kept in a cache outside the clone:
#     ${HRNET_MM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hrnet_mm}/wheels/
# Every step writes its output to a log under .venv/install-logs/; a failing step prints which
# package, which command and where the log is, and exits non-zero.
#
# Environment: PYTHON (interpreter to create the venv with; default python3.11),
#              HRNET_MM_CACHE (wheel cache), FORCE=1 (ignore the stamp).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
LOGS="$VENV/install-logs"
STAMP="$VENV/.hrnet_mm-installed"
CACHE="${HRNET_MM_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/hrnet_mm}"
PYTHON="${PYTHON:-python3.11}"

MMCV_VERSION=2.1.0
TORCH_VERSION=2.14.1

# Everything that decides the installed set goes into the stamp, the CPU kernels' sources included (a changed kernel
# is built by the install, not in a training step).
stamp_inputs=(requirements.txt hrnet_mm-config-hook.pth requirements/special.txt requirements/tests.txt requirements/build.txt
              requirements/constraints.txt requirements/benchmark.txt
              setup.cfg setup.py tools/install_stack.sh hrnet_mm/ops/csrc/*)
stamp_value() {
  (cd "$ROOT" && cat "${stamp_inputs[@]}" | sha256sum | cut -d' ' -f1)
}

started=$(date +%s)
say() { printf '[install] %s\n' "$*"; }

fail() {  # fail STEP LOG CMD...
  local step="$1" log="$2"; shift 2
  printf '\n[install] FAILED: %s\n' "$step" >&2
  printf '[install]   command: %s\n' "$*" >&2
  printf '[install]   log:     %s\n' "$log" >&2
  printf '[install]   last lines of the log:\n' >&2
  tail -n 25 "$log" | sed 's/^/[install]   | /' >&2
  exit 1
}

step() {  # step NAME CMD...  (runs CMD with its output in a log; readable failure)
  local name="$1"; shift
  local log="$LOGS/$(echo "$name" | tr -c 'a-zA-Z0-9.\n' '_').log"
  local t0; t0=$(date +%s)
  printf '[install] %-52s' "$name ..."
  if "$@" >"$log" 2>&1; then
    printf ' ok (%ss)\n' "$(( $(date +%s) - t0 ))"
  else
    printf ' failed\n'
    fail "$name" "$log" "$@"
  fi
}

want=$(stamp_value)
if [[ "${FORCE:-0}" != 1 && -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  say "stack up to date in $VENV (stamp $(cut -c1-12 "$STAMP")); FORCE=1 reinstalls"
  exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "[install] FAILED: interpreter '$PYTHON' not found; hrnet_mm's stack needs Python 3.11 (set PYTHON=...)" >&2
  exit 1
fi
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ "$pyver" != 3.11 ]]; then
  echo "[install] FAILED: '$PYTHON' is Python $pyver; the pinned stack (torch $TORCH_VERSION, mmcv $MMCV_VERSION) needs 3.11" >&2
  exit 1
fi

if [[ ! -x "$PY" ]]; then
  mkdir -p "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$LOGS"
rm -f "$STAMP"
pip() { "$PY" -m pip --disable-pip-version-check "$@"; }
CONSTRAINTS=(-c "$ROOT/requirements/constraints.txt")

step "build tools (pip, setuptools<81, wheel, cython)" pip install -U pip -r "$ROOT/requirements/build.txt"
step "torch $TORCH_VERSION + torchvision" pip install "torch==$TORCH_VERSION" "torchvision==0.29.1"

# --- mmcv with compiled ops: from the wheel cache, or built once from the source archive ---------------
key="mmcv-$MMCV_VERSION-torch$TORCH_VERSION-cp${pyver/./}-$(uname -m)"
wheel_dir="$CACHE/wheels/$key"
have_mmcv_ops() { "$PY" -c "import mmcv; from mmcv.ops import nms, RoIAlign; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; }
build_mmcv_wheel() {
  local src tmp whl
  tmp=$(mktemp -d)
  pip download --no-deps --no-binary mmcv --no-build-isolation "mmcv==$MMCV_VERSION" -d "$tmp/sdist"
  tar -xzf "$tmp"/sdist/mmcv-*.tar.gz -C "$tmp"
  src=$(echo "$tmp"/mmcv-"$MMCV_VERSION")
  # torch >= 2.5 headers need C++20; mmcv 2.1.0 passes -std=c++17.
  grep -q -- '-std=c++17' "$src/setup.py"
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  mkdir -p "$tmp/out"
  (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
     "$PY" -m pip wheel --no-deps --no-build-isolation -w "$tmp/out" .)
  mkdir -p "$wheel_dir"
  # atomic: a half-written wheel never appears in the cache
  whl=$(ls "$tmp"/out/mmcv-*.whl)
  cp "$whl" "$wheel_dir/.partial" && mv "$wheel_dir/.partial" "$wheel_dir/$(basename "$whl")"
  rm -rf "$tmp"
}
if have_mmcv_ops; then
  say "mmcv $MMCV_VERSION with ops already installed"
else
  if ! ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
    step "mmcv $MMCV_VERSION: build wheel with ops (~7 min, once)" build_mmcv_wheel
  else
    say "mmcv $MMCV_VERSION: cached wheel $wheel_dir"
  fi
  step "mmcv $MMCV_VERSION: install cached wheel" pip install --no-deps "$wheel_dir"/mmcv-*.whl
fi

step "runtime stack (requirements.txt)" pip install "${CONSTRAINTS[@]}" -r "$ROOT/requirements.txt" "mmcv==$MMCV_VERSION"
step "mmpose 1.3.2 + openmim 0.3.9 (--no-deps)" pip install --no-deps mmpose==1.3.2 openmim==0.3.9
step "xtcocotools (from source, numpy 2)" pip install "${CONSTRAINTS[@]}" --no-build-isolation --no-binary xtcocotools xtcocotools==1.14.3
step "test and lint tools" pip install "${CONSTRAINTS[@]}" -r "$ROOT/requirements/tests.txt"
step "benchmark runtimes (OpenVINO)" pip install "${CONSTRAINTS[@]}" -r "$ROOT/requirements/benchmark.txt"
step "hrnet_mm (editable)" pip install --no-deps --no-build-isolation -e "$ROOT"
# An editable install does not carry the start-up .pth that a wheel install puts into site-packages
# (it lets configs anywhere write `_base_ = 'hrnet_mm::...'`); put it there the same way.
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp "$ROOT/hrnet_mm-config-hook.pth" "$site/"
# mmengine finds a package's configs at <dist location>/<package>/.mim/configs; for an editable install the
# dist location is site-packages, which has no hrnet_mm folder: link it to the source tree.
ln -sfn "$ROOT/hrnet_mm" "$site/hrnet_mm"
step "check: imports, mmcv ops, registries" "$PY" -m hrnet_mm.cli.env
step "hrnet_mm CPU kernels (~1 min, once per source)" "$PY" -m hrnet_mm.ops.build

echo "$want" > "$STAMP"
say "done in $(( $(date +%s) - started ))s; venv: $VENV"
