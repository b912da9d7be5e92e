#!/usr/bin/env bash
# Distributed training on this machine (or one node of several) with torchrun:
#   bash tools/dist_train.sh CONFIG NPROC [train.py args...]
#   NNODES=2 NODE_RANK=0 PORT=29500 MASTER_ADDR=10.0.0.1 bash tools/dist_train.sh CONFIG 8 --work-dir work_dirs/x
# NPROC processes per node; without a GPU they train on CPU with the gloo backend (hrnet_mm.compat).
# PYTHON selects the interpreter (default: python), e.g. PYTHON=.venv/bin/python.
set -e

if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG NPROC [train.py args...]" >&2
    exit 2
fi

CONFIG=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
TOOLS_DIR="$(cd "$(dirname "$0")" && pwd)"

PYTHONPATH="$TOOLS_DIR/..":$PYTHONPATH \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$TOOLS_DIR/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
