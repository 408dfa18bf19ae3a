"""ModelCheckpoint that never saves a diverged model and always leaves the final weights in ``last.ckpt``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class RockgenCheckpoint(ModelCheckpoint):
    """Periodic + last checkpoints (EMA weights included: they are part of the module's state).

    * Atomic: the files are written by ``rockgen.lit.checkpoint.SafeCheckpointIO`` (``build_trainer`` installs
      it): ``<name>.<pid>.tmp``, fsync, rename. A crash mid-write leaves the previous file intact; stale ``*.tmp``
      files of such a crash are removed when training starts.
    * Finite: a save is refused with ``FloatingPointError`` when a weight or buffer is NaN/Inf, so a diverged
      model never overwrites the last good ``last.ckpt`` (the weights are replicated: every rank refuses).
    * Final: when training ends between two periodic saves, ``last.ckpt`` is brought up to the final step
      (Lightning's own callback only does that when nothing was saved at all).
    * ``save_last_now``: ``last.ckpt`` at the current step, for a pre-emption (``rockgen.callbacks.Preemption``).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath is not None and Path(self.dirpath).is_dir():
            # <name>.ckpt.<pid>.tmp (and <name>.ckpt.tmp of older versions); the run-directory lock makes sure
            # no other writer is mid-write
            for stale in Path(self.dirpath).glob(f"*{self.FILE_EXTENSION}*.tmp"):
                log.warning("Removing %s, left by a checkpoint write that did not finish", stale)
                stale.unlink(missing_ok=True)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        bad = non_finite_tensors(trainer.lightning_module)
        if bad:
            raise FloatingPointError(
                f"not saving {Path(filepath).name} at global step {trainer.global_step}: non-finite values in "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. The previous checkpoints in {self.dirpath} "
                "are untouched. Try a lower model.optim.lr or trainer.precision=32."
            )
        super()._save_checkpoint(trainer, filepath)  # collective: every rank calls, rank 0 writes

    def save_last_now(self, trainer: pl.Trainer) -> Path:
        """Write ``last.ckpt`` for the current step (unless it is already there); call on every rank."""
        path = self.last_path(self.dirpath)
        if self._last_global_step_saved < trainer.global_step:  # replicated state: every rank agrees
            if self.save_last:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            else:
                self._save_checkpoint(trainer, str(path))
        return path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved < trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    @staticmethod
    def last_path(dirpath: str | Path) -> Path:
        return Path(dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


def non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` holding a NaN or Inf."""
    with torch.no_grad():
        return [
            name
            for name, t in [*module.named_parameters(), *module.named_buffers()]
            if t.is_floating_point() and not bool(torch.isfinite(t).all())
        ]
