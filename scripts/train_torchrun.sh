#!/usr/bin/env bash
# Train with torchrun: one process per device on this node, on one or several nodes.
#
# Usage: [NPROC_PER_NODE=n] [NNODES=m NODE_RANK=i MASTER_ADDR=host MASTER_PORT=port] \
#        scripts/train_torchrun.sh [hydra overrides ...]
#   NPROC_PER_NODE=8 scripts/train_torchrun.sh template=rock256 data.root=/data/tiles     # one node, 8 GPUs
#   # two nodes, 8 GPUs each: run on both, NODE_RANK=0 on the node named in MASTER_ADDR
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 NPROC_PER_NODE=8 scripts/train_torchrun.sh template=rock256 ...
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 NPROC_PER_NODE=8 scripts/train_torchrun.sh template=rock256 ...
#   NPROC_PER_NODE=2 scripts/train_torchrun.sh trainer.accelerator=cpu                  # 2 CPU processes (gloo)
#
# Defaults: NPROC_PER_NODE = number of visible GPUs (1 without any), NNODES=1, NODE_RANK=0,
# MASTER_ADDR=127.0.0.1, MASTER_PORT=29500, MAX_RESTARTS=0, PYTHON=python.
# ROCKGEN_RUN_STAMP names timestamped runs (task=generate ...): set the same value on every node.
# MAX_RESTARTS=k lets torchrun restart all ranks up to k times after a failure; each restart resumes from
# last.ckpt (resume=auto). The run directory (logs/) must be on a file system all nodes share.
set -euo pipefail

PYTHON=${PYTHON:-python}
export PYTHON
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ROCKGEN_ROOT=$root
gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
nproc=${NPROC_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}
nnodes=${NNODES:-1}
# One time stamp for every rank's ${run_stamp:} in run names (set it yourself to share it across nodes).
ROCKGEN_RUN_STAMP=${ROCKGEN_RUN_STAMP:-$(date +%Y%m%d-%H%M%S)}
export ROCKGEN_RUN_STAMP

# Each rank runs run.py; ranks > 0 keep Hydra's .hydra/ and <task>.log to rank 0 (their log: rank<N>.log).
# shellcheck disable=SC2016  # expanded by the per-rank shell, with torchrun's RANK
per_rank='extra=(); if [ "${RANK:-0}" != 0 ]; then extra=(hydra.output_subdir=null "hydra.job.name=rank$RANK"); fi
exec "$PYTHON" "$ROCKGEN_ROOT/run.py" "$@" "${extra[@]}"'

exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$nnodes" --nproc-per-node="$nproc" --node-rank="${NODE_RANK:-0}" \
    --master-addr="${MASTER_ADDR:-127.0.0.1}" --master-port="${MASTER_PORT:-29500}" \
    --max-restarts="${MAX_RESTARTS:-0}" \
    --no-python bash -c "$per_rank" rank \
    strategy=torchrun trainer.devices="$nproc" trainer.num_nodes="$nnodes" "$@"
