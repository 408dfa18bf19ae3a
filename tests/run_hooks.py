"""Test-only hooks that training runs load by name from the config (also in DDP subprocesses)::

    +callbacks.probe._target_=run_hooks.Probe +callbacks.probe.out_dir=...
    model._target_=run_hooks.PoisonedLitModel +model.poison=data +model.poison_step=2 +model.poison_rank=1

This module must not import ``conftest``: that would reset the subprocess's environment (W&B mode, caches).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytorch_lightning as pl
import torch

from rockgen.lit.diffae import LitModel


class Probe(pl.Callback):
    """Each rank writes ``probe_rank<r>.json``: items seen per step, a hash of its final weights, topology."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.indices: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.indices.append(batch["index"].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "node_rank": trainer.node_rank,
            "cluster": type(trainer.strategy.cluster_environment).__name__,
            "global_step": trainer.global_step,
            "indices": self.indices,
            "weights": weights_digest(pl_module),
        }
        path = Path(self.out_dir) / f"probe_rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the state dict (bit-exact comparison across processes)."""
    digest = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class PoisonedLitModel(LitModel):
    """LitModel that goes bad at ``poison_step`` (global step at the start of the batch), on one rank or all.

    ``poison="data"``: that batch's pixels are NaN (as a corrupt tile would be), so the loss is NaN.
    ``poison="weights"``: after that step's optimizer update a weight is NaN while the loss was finite (as an
    overflowing gradient would leave it), so only the checkpoint's own check can catch it.
    """

    def __init__(self, *args, poison: str = "data", poison_step: int = 2, poison_rank: int = -1, **kwargs):
        super().__init__(*args, **kwargs)
        self.poison, self.poison_step, self.poison_rank = poison, poison_step, poison_rank
        self._bad_step = False

    def training_step(self, batch, batch_idx: int):
        self._bad_step = self.global_step == self.poison_step and self.poison_rank in (-1, self.global_rank)
        if self._bad_step and self.poison == "data":
            batch = {**batch, "img": batch["img"] * float("nan")}
        return super().training_step(batch, batch_idx)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._bad_step and self.poison == "weights":
            with torch.no_grad():
                next(self.model.decoder.parameters()).fill_(float("nan"))
