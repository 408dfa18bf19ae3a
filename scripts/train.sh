#!/usr/bin/env bash
# Train on one machine with N devices, one process per device (DDP); Lightning starts the N processes.
#
# Usage: scripts/train.sh N [hydra overrides ...]
#   scripts/train.sh 4 template=rock128 data.root=/data/tiles            # 4 GPUs (nccl)
#   scripts/train.sh 2 trainer.accelerator=cpu                           # 2 CPU processes (gloo)
#   scripts/train.sh 1 template=demo                                     # one device, no DDP
#   scripts/train.sh 4 strategy=ddp_spawn ...                            # ranks spawned instead (notebooks)
#
# data.batch_size is the GLOBAL batch (each rank loads batch_size / N). Run the same command again after a
# crash, kill or pre-emption: it resumes from the run's last.ckpt (resume=auto). SIGTERM to the main process
# saves last.ckpt at the next step and exits 0; a rank that dies takes the whole job down (non-zero exit).
#
# Environment: PYTHON (default: python) - the interpreter with rockgen installed.
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
devices=$1
shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

args=("trainer.devices=$devices")
chosen=false
for arg in "$@"; do
    [[ "$arg" == strategy=* ]] && chosen=true
done
if [[ $chosen == false ]]; then
    if [[ $devices -eq 1 ]]; then
        args+=(strategy=single)
    else
        # Lightning launches the ranks itself, even inside a SLURM allocation (no srun per rank here)
        args+=(strategy=ddp strategy.cluster=lightning)
    fi
fi

exec "${PYTHON:-python}" "$root/run.py" "${args[@]}" "$@"
