"""Training order that survives a restart: a pure function of (seed, epoch), resumable mid-epoch.

``EpochSampler`` shuffles the dataset with a generator seeded by ``(seed, epoch)`` and gives rank ``r`` of ``R``
the positions ``r, r + R, r + 2R, ...``, so the global batch at step ``s`` is the same set of items for any
world size (the ranks' shares interleave). It yields ``(index, item_seed)``: ``TileDataset`` draws the item's
random crop and flips from ``item_seed = f(seed, epoch, index)``, so augmentation depends neither on the
DataLoader workers nor on when the run was restarted.

``ResumableLoader`` is a DataLoader that Lightning saves in checkpoints (``state_dict``/``load_state_dict``):
how many samples of the current epoch the training loop consumed. On resume the sampler skips them, so an
interrupted-and-resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def derive_seed(*keys: Any) -> int:
    """A well-mixed 63-bit seed from a tuple of keys (same on every machine and Python run, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class EpochSampler(DistributedSampler):
    """Shuffled, sharded, ``drop_last`` training order; ``resume(epoch, samples)`` skips consumed samples.

    A ``DistributedSampler`` subclass, so Lightning keeps it instead of inserting its own under DDP, and calls
    ``set_epoch`` at each epoch start. ``len()`` is the full per-rank epoch (a resumed epoch yields fewer).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self._resume_at: tuple[int, int] | None = None  # (epoch, per-rank position) set by resume

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch`` in order."""
        gen = torch.Generator().manual_seed(derive_seed("order", self.seed, epoch))
        perm = torch.randperm(len(self.dataset), generator=gen)[: self.total_size].tolist()
        return perm[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # a generator: the epoch is read at the first next(), after Lightning's set_epoch
        epoch, resume_at, self._resume_at = self.epoch, self._resume_at, None
        start = resume_at[1] if resume_at is not None and resume_at[0] == epoch else 0
        for index in self.epoch_order(epoch)[start:]:
            yield index, derive_seed("item", self.seed, epoch, index)

    def resume(self, epoch: int, samples: int, min_remaining: int = 1) -> None:
        """Continue ``epoch`` after ``samples`` consumed samples (global, over all ranks); the next epoch when
        fewer than ``min_remaining`` (a batch, with ``drop_last``) are left on this rank."""
        per_rank = samples // self.num_replicas
        if samples % self.num_replicas:
            warnings.warn(
                f"resuming after {samples} samples, not divisible by the world size {self.num_replicas}: "
                f"each rank skips {per_rank}",
                stacklevel=2,
            )
        if self.num_samples - per_rank < min_remaining:  # the checkpoint was taken on the epoch's last batch
            epoch, per_rank = epoch + 1, 0
        self.set_epoch(epoch)
        self._resume_at = (epoch, per_rank)


class ResumableLoader(DataLoader):
    """DataLoader over an ``EpochSampler`` whose position Lightning stores in each checkpoint.

    ``consumed_batches`` (set by the datamodule) returns how many batches of the current epoch the training loop
    has processed on this rank; the prefetched batches of the fetcher and the workers do not count.
    """

    consumed_batches: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, int]:
        sampler: EpochSampler = self.sampler
        batches = self.consumed_batches() if self.consumed_batches is not None else 0
        return {
            "epoch": int(sampler.epoch),
            "samples": int(batches * self.batch_size * sampler.num_replicas),
            "seed": int(sampler.seed),
            "dataset_len": len(sampler.dataset),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: EpochSampler = self.sampler
        if state.get("dataset_len") != len(sampler.dataset) or state.get("seed") != sampler.seed:
            warnings.warn(
                f"the training set or seed changed since the checkpoint (items {state.get('dataset_len')} -> "
                f"{len(sampler.dataset)}, seed {state.get('seed')} -> {sampler.seed}): epoch {state['epoch']} "
                "restarts from its first batch in the new order",
                stacklevel=2,
            )
            sampler.set_epoch(int(state["epoch"]))
            return
        sampler.resume(int(state["epoch"]), int(state["samples"]), self.batch_size if self.drop_last else 1)


def epoch_sampler(datamodule: Any, dataset: Dataset, shuffle_seed: int | None = None) -> EpochSampler:
    """This rank's ``EpochSampler`` of ``dataset`` under the datamodule's Trainer (one process without one),
    seeded by ``shuffle_seed``, or by the run's seed (``PL_GLOBAL_SEED``) when None."""
    trainer = getattr(datamodule, "trainer", None)
    world, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
    seed = shuffle_seed if shuffle_seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
    return EpochSampler(dataset, num_replicas=world, rank=rank, seed=seed)


def consumed_train_batches(datamodule: Any) -> int:
    """Batches of the current epoch the datamodule's training loop has processed on this rank: a
    ``ResumableLoader.consumed_batches`` (bind the datamodule with ``functools.partial``)."""
    trainer = getattr(datamodule, "trainer", None)
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed) if trainer is not None else 0


def split_global_batch(name: str, value: int, world: int) -> int:
    """Per-rank batch of a global ``data.<name>``; a clear error when the world size does not divide it."""
    if value % world:
        raise ValueError(
            f"data.{name}={value} is the global batch size and must be divisible by the world size "
            f"{world} (devices x nodes); choose e.g. data.{name}={max(world, value - value % world)}"
        )
    return value // world
