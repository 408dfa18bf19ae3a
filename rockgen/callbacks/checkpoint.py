"""ModelCheckpoint that writes atomically and always leaves the final weights in ``last.ckpt``."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class RockgenCheckpoint(ModelCheckpoint):
    """Periodic + last checkpoints (EMA weights included: they are part of the module's state).

    * Atomic: each file is written to ``<name>.tmp`` in the same folder and renamed over the target, so a
      crash or ``kill -9`` mid-write leaves the previous checkpoint intact.
    * Final: when training ends between two periodic saves, ``last.ckpt`` is brought up to the final step
      (Lightning's own callback only does that when nothing was saved at all).
    """

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        super()._save_checkpoint(trainer, tmp)  # collective: every rank calls, rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        self._last_checkpoint_saved = filepath
        trainer.strategy.barrier("RockgenCheckpoint.replace")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved < trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    @staticmethod
    def last_path(dirpath: str | Path) -> Path:
        return Path(dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
