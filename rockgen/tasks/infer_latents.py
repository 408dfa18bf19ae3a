"""``task=infer_latents``: z_sem of every tile of a dataset by the EMA encoder, in dataset order.

Runs Lightning's predict loop (any number of devices); each rank encodes its share, the codes are gathered
and put back in dataset order (the distributed sampler's padding dropped), and rank 0 writes
``latents.pt`` + ``latents.npy`` into the run directory (see ``rockgen.latents``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import BasePredictionWriter

from rockgen.latents import Latents, encoder_fingerprint, latent_stats, save_latents
from rockgen.lit.checkpoint import CheckpointError, load_checkpoint_module
from rockgen.precision import resolve_precision
from rockgen.tasks.build import build_callbacks, build_strategy


class GatherLatents(BasePredictionWriter):
    """Keeps each batch's (index, z); at the end gathers all ranks, restores dataset order, rank 0 writes."""

    def __init__(self, path: Path, paths: list[str], labels: list[str], meta: dict[str, Any]) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.path, self.paths, self.labels, self.meta = path, paths, labels, meta
        self._z: list[torch.Tensor] = []
        self._idx: list[torch.Tensor] = []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._z.append(prediction["z"])
        self._idx.append(prediction["index"])

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        z = torch.cat(self._z).to(pl_module.device)
        idx = torch.cat(self._idx).to(pl_module.device)
        if trainer.world_size > 1:  # equal counts per rank: the distributed sampler pads
            z = pl_module.all_gather(z).flatten(0, 1)
            idx = pl_module.all_gather(idx).flatten(0)
        n = len(self.paths)
        out = torch.empty(n, z.shape[1], dtype=z.dtype, device=z.device)
        seen = torch.zeros(n, dtype=torch.bool, device=z.device)
        out[idx] = z  # padding repeats items: identical codes land on the same row
        seen[idx] = True
        if not bool(seen.all()):
            raise RuntimeError(f"latent inference missed {int((~seen).sum())} of {n} items")
        if trainer.is_global_zero:
            z = out.cpu()
            mean, std = latent_stats(z)
            lat = Latents(
                z=z,
                paths=self.paths,
                labels=self.labels,
                mean=mean,
                std=std,
                fingerprint=encoder_fingerprint(pl_module.ema_model.encoder),
                **self.meta,
            )
            pt, npy = save_latents(self.path, lat)
            print(f"Wrote {n} codes of width {lat.dim} to {pt} (and {npy.name})", flush=True)


def infer_latents(cfg: DictConfig) -> dict[str, Any]:
    """Encode the dataset of ``cfg.data`` with the autoencoder at ``cfg.ckpt_path``; write the latents file."""
    from rockgen.lit.diffae import LitModel

    if not cfg.ckpt_path:
        raise ValueError("task=infer_latents needs ckpt_path=<autoencoder checkpoint>")
    try:
        model = load_checkpoint_module(cfg.ckpt_path, expect=LitModel)
    except CheckpointError as err:
        raise CheckpointError(f"ckpt_path: {err} (task=infer_latents needs a DiffAE autoencoder checkpoint)") from None
    run_dir = Path(cfg.paths.run_dir)
    dm = hydra.utils.instantiate(cfg.data, image_size=model.image_size, _convert_="all")
    dm.setup("predict")
    paths = dm.predict_paths()
    labels_of_file = dict(zip(dm.files, dm.labels(), strict=True))
    out = run_dir / cfg.latents_name
    meta = dict(
        checkpoint=str(cfg.ckpt_path),
        image_size=model.image_size,
        global_step=model.loaded_from["global_step"],
    )
    writer = GatherLatents(out, paths, [labels_of_file[p] for p in paths], meta)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        precision=resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"), training=False),
        logger=False,
        callbacks=[writer, *build_callbacks(cfg.get("callbacks"), only=("progress",))],
        strategy=build_strategy(cfg.get("strategy")),
        default_root_dir=str(run_dir),
        max_steps=-1,
    )
    trainer.predict(model, datamodule=dm, return_predictions=False)
    return {
        "run_dir": run_dir,
        "latents_path": out,
        "npy_path": out.with_suffix(".npy"),
        "num_items": len(paths),
    }
