#!/usr/bin/env bash
# Writes .whl/ (ignored by git): the pure-Python wheels that tools/gpu_check.sh installs on a GPU machine that
# has PyTorch and timm but no network and none of the OpenMMLab packages (Python 3.12 there): mmengine and its
# small dependencies at the versions of requirements/constraints.txt, and mmcv 2.1.0 built without its
# compiled ops (mmcv-lite; hrnet_mm needs only mmcv.cnn). Run it where PyPI is reachable, after `make install`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
[[ -x "$PY" ]] || { echo "fetch_gpu_wheels: run 'make install' first (needs $PY)" >&2; exit 1; }
mkdir -p "$ROOT/.whl"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -c "$ROOT/requirements/constraints.txt" \
  -d "$ROOT/.whl" mmengine addict termcolor yapf platformdirs
"$PY" -m pip download -q --no-deps --no-binary mmcv --no-build-isolation mmcv==2.1.0 -d "$tmp"
tar -xzf "$tmp"/mmcv-2.1.0.tar.gz -C "$tmp"
(cd "$tmp/mmcv-2.1.0" && MMCV_WITH_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation . -w "$ROOT/.whl")
ls -l "$ROOT/.whl"
