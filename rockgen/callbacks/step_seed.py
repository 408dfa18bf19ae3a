"""Per-step seeding: the model's random draws depend on (seed, rank, step), not on the run's history.

Diffusion training draws t, the noise ε and dropout masks from torch's global generator. Lightning does not
save that generator in checkpoints (and each DDP rank has its own), so after a resume the draws would differ
from an uninterrupted run. Re-seeding it at the start of every training batch from
``(seed, global rank, global step, batch index)`` makes each step's draws a pure function of where training
is, which is what lets an interrupted-and-resumed run end with the same weights as an uninterrupted one.
The data side (order, crops, flips) is made resumable by ``rockgen.data.sampler``.
"""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch

from rockgen.data.sampler import derive_seed


class StepSeed(pl.Callback):
    """``torch.manual_seed(f(seed, rank, global_step, batch_idx))`` before each training batch.

    Args:
        seed: the run's seed; ``None`` = the one ``seed_everything`` set (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        # batch_idx tells apart the micro-batches of one optimizer step (gradient accumulation)
        torch.manual_seed(derive_seed("step", seed, trainer.global_rank, trainer.global_step, batch_idx))
