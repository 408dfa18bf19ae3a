"""DataModule over a latents file: batches of z_sem codes for training the latent DDIM (stage 2)."""

from __future__ import annotations

from functools import partial

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from rockgen.data.datamodule import split_global_batch
from rockgen.data.sampler import ResumableLoader, consumed_train_batches, epoch_sampler
from rockgen.latents import Latents, load_latents


class LatentDataModule(pl.LightningDataModule):
    """Codes z (N, D) from ``task=infer_latents``; batches are dicts ``{"z": (B, D), "index": (B,)}`` of raw
    (unnormalised) z and their rows in the latents file.

    Whole batches are drawn by one fancy-indexing op (``__getitems__``), not by collating B rows: at batch 256
    the per-row collate would cost more than the latent network's step. The training order is the tiles'
    ``EpochSampler``: a function of (seed, epoch) only, sharded over DDP ranks, and resumed mid-epoch from the
    loader state in the checkpoint, so an interrupted-and-resumed run sees the batches of an uninterrupted one.
    A deterministic ``val_fraction`` of the rows (every k-th) is held out for the validation loss.
    """

    def __init__(
        self,
        latents_path: str,
        batch_size: int = 256,
        val_fraction: float = 0.05,
        num_workers: int = 0,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.shuffle_seed = shuffle_seed  # None: the run's seed (PL_GLOBAL_SEED)
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
        rows = torch.arange(n)  # each batch carries its rows of the latents file (their class labels)
        self.train_rows, self.val_rows = rows[~is_val], rows[is_val]
        if len(self.train_z) < self.batch_size:
            raise ValueError(
                f"{self.latents_path} has {len(self.train_z)} training codes, fewer than one global batch of "
                f"{self.batch_size} (data.batch_size): lower data.batch_size"
            )

    def train_dataloader(self) -> DataLoader:
        if self.latents is None:
            self.setup("fit")
        codes = _Codes(self.train_z, self.train_rows)
        loader = ResumableLoader(
            codes,
            batch_size=self.per_rank_batch_size,
            sampler=epoch_sampler(self, codes, self.shuffle_seed),
            drop_last=True,
            collate_fn=_already_batched,
            num_workers=self.num_workers,
        )
        loader.consumed_batches = partial(consumed_train_batches, self)
        return loader

    def val_dataloader(self) -> DataLoader:
        if self.latents is None:
            self.setup("validate")
        if len(self.val_z):
            z, rows = self.val_z, self.val_rows
        else:
            z, rows = self.train_z[: self.per_rank_batch_size], self.train_rows[: self.per_rank_batch_size]
        return DataLoader(
            _Codes(z, rows),
            batch_size=self.per_rank_batch_size,
            shuffle=False,
            collate_fn=_already_batched,
            num_workers=self.num_workers,
        )


class _Codes(Dataset):
    """Rows of z; ``__getitems__`` (what the DataLoader's fetcher calls with a batch of keys) returns the whole
    ``{"z": (B, D), "index": (B,)}`` batch (index = row in the latents file). Keys are row indices or the
    ``(index, item_seed)`` pairs of ``EpochSampler``."""

    def __init__(self, z: torch.Tensor, rows: torch.Tensor) -> None:
        self.z, self.rows = z, rows

    def __len__(self) -> int:
        return self.z.shape[0]

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        return self.__getitems__([key])

    def __getitems__(self, keys: list) -> dict[str, torch.Tensor]:
        rows = [k[0] if isinstance(k, tuple) else int(k) for k in keys]
        return {"z": self.z[rows], "index": self.rows[rows]}


def _already_batched(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """collate_fn: ``_Codes.__getitems__`` returns a finished batch."""
    return batch
