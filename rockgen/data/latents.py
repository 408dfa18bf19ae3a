"""DataModule over a latents file: batches of z_sem codes for training the latent DDIM (stage 2)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from rockgen.data.datamodule import split_global_batch
from rockgen.latents import Latents, load_latents


class LatentDataModule(pl.LightningDataModule):
    """Codes z (N, D) from ``task=infer_latents``; batches are dicts ``{"z": (B, D)}`` of raw (unnormalised) z.

    Whole batches are drawn by one fancy-indexing op (a BatchSampler as sampler), not by collating B rows:
    at batch 256 the per-row collate would cost more than the latent network's step.
    A deterministic ``val_fraction`` of the rows (every k-th) is held out for the validation loss.
    """

    def __init__(
        self, latents_path: str, batch_size: int = 256, val_fraction: float = 0.05, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.latents_path = latents_path
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.num_workers = int(num_workers)
        self.latents: Latents | None = None

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if getattr(self, "trainer", None) is not None else 1
        self.per_rank_batch_size = split_global_batch("batch_size", self.batch_size, world)
        if self.latents is None:
            self.latents = load_latents(self.latents_path)
        n = self.latents.z.shape[0]
        every = max(2, round(1 / self.val_fraction)) if self.val_fraction > 0 else n + 1
        is_val = torch.arange(n) % every == every - 1
        self.train_z, self.val_z = self.latents.z[~is_val], self.latents.z[is_val]
        if len(self.train_z) < self.per_rank_batch_size:
            raise ValueError(
                f"{self.latents_path} has {len(self.train_z)} training codes, fewer than one batch of "
                f"{self.per_rank_batch_size}: lower data.batch_size"
            )

    def _loader(self, z: torch.Tensor, shuffle: bool, drop_last: bool) -> DataLoader:
        base = RandomSampler(z) if shuffle else SequentialSampler(z)
        batches = BatchSampler(base, self.per_rank_batch_size, drop_last=drop_last)
        return DataLoader(_Codes(z), sampler=batches, batch_size=None, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_z, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(
            self.val_z if len(self.val_z) else self.train_z[: self.per_rank_batch_size],
            shuffle=False,
            drop_last=False,
        )


class _Codes(TensorDataset):
    """Indexable by a list of rows → one ``{"z": (B, D)}`` batch."""

    def __init__(self, z: torch.Tensor) -> None:
        super().__init__(z)

    def __getitem__(self, rows):
        return {"z": self.tensors[0][rows]}
