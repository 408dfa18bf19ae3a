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
during validation is acted on after the current validation batch (the same agreement, at every batch end), and
in a single-process run even between two sampler steps: the samplers' network call checks
:func:`check_preempted`, which raises :class:`Preempted`, and ``on_exception`` writes ``last.ckpt``. So the
wait is one network call (single process) or one validation batch (DDP), not the whole validation.
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

_ACTIVE: list[Any] = []  # the flag holders of this process (a Preemption callback, generate's SignalFlag)


class Preempted(SIGTERMException):
    """Raised between two sampler steps (or generation batches) after a pre-emption signal."""


def preempt_requested() -> bool:
    """True once a watched signal arrived in this process (single-process runs only: under DDP the ranks must
    agree at a batch boundary, so a lone rank never leaves a collective half-done)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return False
    return any(h.received is not None for h in _ACTIVE)


def check_preempted() -> None:
    """Raise :class:`Preempted` if a pre-emption signal arrived (called per network call while sampling)."""
    if _ACTIVE and preempt_requested():
        raise Preempted


class SignalFlag:
    """Context manager: the signals only set ``received`` (for loops outside training, e.g. task=generate)."""

    def __init__(self, signals: Sequence[str | int] = ("SIGTERM", "SIGUSR1")) -> None:
        self.signals = [_signum(s) for s in signals]
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        self.received = self.received or signal.Signals(signum)

    def __enter__(self) -> SignalFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handler) for sig in self.signals}
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.remove(self)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


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
        _ACTIVE.append(self)
        if trainer.received_sigterm and self.received is None:  # arrived between Lightning's set-up and now
            self.received = signal.SIGTERM

    def _restore(self) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, Preempted) and trainer.state.fn == "fit":  # raised between two sampler steps
            self._save(trainer, requeue=self._requeue_requested)
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
        self._check(trainer)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # a long validation must not delay the stop
            self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        stop, requeue = self._agreed(trainer)
        if not stop:
            return
        self._save(trainer, requeue)
        trainer.strategy.barrier("Preemption.stop")
        raise SIGTERMException

    def _save(self, trainer: pl.Trainer, requeue: bool) -> None:
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
