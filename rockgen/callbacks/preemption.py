"""Pre-emption: on SIGTERM (or SLURM's time-limit warning) save ``last.ckpt`` at the next step and exit cleanly.

Lightning 2.6 handles SIGTERM by raising ``SIGTERMException`` at the next step on every rank, but saves nothing,
and its handler runs a ``dist.broadcast`` inside the signal handler (its SLURM ``auto_requeue`` handler even
writes a checkpoint there), which can pair with another rank's gradient all-reduce. This callback replaces
those handlers for the duration of training with ones that only set a flag. At the end of every training step
the ranks agree on the flag with one tiny all-reduce (so one signalled rank is enough, whoever got it), then:

1. every rank takes part in writing ``last.ckpt`` for that step (atomic, as a periodic checkpoint would be);
2. on the ``requeue_signal`` inside a SLURM job, rank 0 runs ``scontrol requeue $SLURM_JOB_ID``;
3. every rank raises Lightning's ``SIGTERMException`` (a ``SystemExit``): the process exits with status 0.

The same command (or the requeued job) then resumes from ``last.ckpt`` (``resume=auto``). A signal that arrives
during validation is acted on after the next training step: give SLURM's ``--signal=USR1@<seconds>`` enough
lead time for a step, a validation and a checkpoint write.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


def _signum(sig: str | int) -> signal.Signals:
    return signal.Signals(sig) if isinstance(sig, int) else signal.Signals[str(sig).upper()]


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` needs (``<array job>_<task>`` for array jobs), or None outside SLURM."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class Preemption(pl.Callback):
    """Save ``last.ckpt`` and stop on a signal, at a step boundary agreed by all ranks (see the module docstring).

    Args:
        signals: signals that trigger the save-and-stop (names or numbers).
        requeue_signal: the one of ``signals`` that also requeues a SLURM job (``#SBATCH --signal=USR1@180``);
            ``None`` never requeues. SLURM requeues pre-empted jobs on its own (SIGTERM): no scontrol needed.
    """

    def __init__(self, signals: Sequence[str | int] = ("SIGTERM", "SIGUSR1"), requeue_signal: str | None = "SIGUSR1"):
        self.signals = [_signum(s) for s in signals]
        self.requeue_signal = _signum(requeue_signal) if requeue_signal else None
        self.received: signal.Signals | None = None
        self._requeue_requested = False
        self._previous: dict[signal.Signals, Any] = {}
        self._group: Any = None  # a CPU (gloo) process group: the flag never waits for the GPU stream

    # ------------------------------------------------------------------ signal handling (flag only)
    def _handler(self, signum: int, _frame: Any) -> None:
        # No I/O, logging or collectives here: they could interleave with the interrupted code.
        if self.received is None:
            self.received = signal.Signals(signum)
        if signum == self.requeue_signal:
            self._requeue_requested = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received, self._requeue_requested = None, False
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            self._group = None if "gloo" in str(dist.get_backend()) else dist.new_group(backend="gloo")
        # Lightning has installed its handlers by now (Trainer._run); ours replace them until training ends.
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handler)
        if trainer.received_sigterm and self.received is None:  # arrived between Lightning's set-up and now
            self.received = signal.SIGTERM

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    # ------------------------------------------------------------------ the decision, at a step boundary
    def _agreed(self, trainer: pl.Trainer) -> tuple[bool, bool]:
        """(stop, requeue) as any rank saw it: one all-reduce of two numbers per optimizer step."""
        flags = torch.tensor([self.received is not None, self._requeue_requested], dtype=torch.int32)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flags[0]), bool(flags[1])

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if (batch_idx + 1) % trainer.accumulate_grad_batches and not last:
            return  # mid-accumulation: decide after the optimizer step (a checkpoint holds no partial gradients)
        stop, requeue = self._agreed(trainer)
        if not stop:
            return
        name = self.received.name if self.received is not None else "a signal (another rank)"
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and hasattr(ckpt, "save_last_now"):
            path = ckpt.save_last_now(trainer)
            rank_zero_info(
                f"Received {name}: saved {path} at global step {trainer.global_step}; stopping. "
                "Run the same command to resume (resume=auto)."
            )
        else:
            rank_zero_info(f"Received {name}: stopping at global step {trainer.global_step} (no checkpoint callback)")
        if requeue and trainer.is_global_zero:
            self.requeue()
        trainer.strategy.barrier("Preemption.stop")
        raise SIGTERMException

    @staticmethod
    def requeue() -> None:
        """``scontrol requeue`` this SLURM job (rank 0, after the checkpoint is on disk)."""
        job = slurm_job_id()
        if job is None:
            return
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            log.warning("could not requeue SLURM job %s: %s", job, err)
            return
        if result.returncode == 0:
            rank_zero_info(f"Requeued SLURM job {job}")
        else:
            log.warning("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
