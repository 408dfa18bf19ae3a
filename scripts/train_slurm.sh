#!/usr/bin/env bash
#SBATCH --job-name=rockgen
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4        # one task (rank) per GPU: keep equal to --gpus-per-node
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8          # data-loading workers + 1
#SBATCH --time=24:00:00
#SBATCH --requeue                  # the job may be put back in the queue (pre-emption, time-limit warning)
#SBATCH --signal=USR1@180          # SIGUSR1 to every rank 3 min before the time limit: save last.ckpt, requeue
#SBATCH --open-mode=append         # a requeued job appends to the same output file
#SBATCH --output=%x-%j.out
#
# Train on a SLURM cluster, one rank per task (srun), one or several nodes.
#
# Usage (from the repository root; the #SBATCH lines are defaults, command-line options override them):
#   sbatch scripts/train_slurm.sh template=rock256 data.root=/data/tiles
#   sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 scripts/train_slurm.sh template=rock256 ...
#   sbatch --partition=cpu --gpus-per-node=0 --ntasks-per-node=2 scripts/train_slurm.sh trainer.accelerator=cpu
#
# Devices and nodes come from the allocation (trainer.devices = tasks per node, trainer.num_nodes = nodes).
# On SIGUSR1 (time limit near) every rank saves last.ckpt at the next step, rank 0 runs `scontrol requeue`,
# and the requeued job resumes from it (resume=auto; keep run_name fixed: it names the run directory).
# Pre-emption (SIGTERM) saves last.ckpt too; SLURM requeues pre-empted jobs itself. A rank that fails ends
# the whole step (--kill-on-bad-exit). logs/ must be on a file system all nodes share.
#
# Environment: PYTHON (default: python) - the interpreter with rockgen installed.
set -euo pipefail

PYTHON=${PYTHON:-python}
export PYTHON
cd "${SLURM_SUBMIT_DIR:-.}"
[[ -f run.py ]] || { echo "run from the rockgen repository root (sbatch scripts/train_slurm.sh ...)" >&2; exit 2; }
: "${SLURM_JOB_ID:?not inside a SLURM job: submit with sbatch scripts/train_slurm.sh ...}"
tasks_per_node=${SLURM_NTASKS_PER_NODE:-1}
tasks_per_node=${tasks_per_node%%(*}   # "4(x2)" -> 4
nodes=${SLURM_NNODES:-1}
echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $nodes node(s) x $tasks_per_node rank(s)"

# Each rank runs run.py; ranks > 0 keep Hydra's .hydra/ and <task>.log to rank 0 (their log: rank<N>.log).
# shellcheck disable=SC2016  # expanded by the per-rank shell, with srun's SLURM_PROCID
per_rank='extra=(); if [ "${SLURM_PROCID:-0}" != 0 ]; then extra=(hydra.output_subdir=null "hydra.job.name=rank$SLURM_PROCID"); fi
exec "$PYTHON" run.py "$@" "${extra[@]}"'

exec srun --kill-on-bad-exit=1 bash -c "$per_rank" rank \
    strategy=slurm trainer.devices="$tasks_per_node" trainer.num_nodes="$nodes" "$@"
