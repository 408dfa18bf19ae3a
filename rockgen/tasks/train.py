"""``task=train``: fit the module the template describes, resuming when the run has a last checkpoint.

Resuming loads the checkpoint with ``weights_only=True`` (tensors and plain containers only); a legacy file that
needs unpickling is refused with a clear error unless ``trusted_checkpoint=true`` is given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

from rockgen.conditioning import resolve_auto_classes
from rockgen.run_lock import RunDirLock, first_process
from rockgen.tasks import write_json
from rockgen.tasks.build import build_trainer

log = logging.getLogger(__name__)


def resolve_resume(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to resume from: ``ckpt_path`` (a path or "last"), or with ``resume=auto`` this run's last."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.resume not in ("auto", "never"):
        raise ValueError(f"resume must be auto or never, got {cfg.resume!r}")
    if cfg.ckpt_path == "last":
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path=last but {last} does not exist (nothing to resume in {run_dir})")
        return str(last)
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path: checkpoint not found: {path}")
        return str(path)
    if last.is_file():
        if cfg.resume == "never":
            raise FileExistsError(
                f"{run_dir} already holds checkpoints and resume=never: choose another "
                "run_name=... or resume=auto to continue it"
            )
        log.info("Resuming from %s (resume=auto)", last)
        return str(last)
    return None


def check_image_size(cfg: DictConfig, model: Any) -> None:
    """``data.image_size`` must be the size the model was built for (an error before any training step)."""
    want, have = getattr(model, "image_size", None), cfg.data.get("image_size")
    stage = getattr(getattr(model, "stage", None), "name", None)
    if want is None or have is None or stage == "latent":
        return
    if int(have) != int(want):
        raise ValueError(
            f"data.image_size={have} but the model is built for {want} px tiles (model.*.image_size): set both to "
            f"the same value (e.g. data.image_size={want}) or choose a template of that resolution"
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then write ``metrics.json`` (last logged values, rank 0) into the run directory.

    The run directory is locked for the whole fit (``rockgen.run_lock``): a second training with the same
    ``run_name`` stops at once with the PID of the first."""
    run_dir = Path(cfg.paths.run_dir)
    lock = RunDirLock(run_dir).acquire() if first_process() else None
    try:
        return _train(cfg, run_dir)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    pl.seed_everything(cfg.seed, workers=True)
    ckpt = resolve_resume(cfg, run_dir)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    resolve_auto_classes(cfg.model, datamodule)
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    check_image_size(cfg, model)
    trainer = build_trainer(cfg, run_dir)
    if ckpt:
        _print(f"Resuming from {ckpt}")
    # loaded by SafeCheckpointIO: weights_only unless trusted_checkpoint=true (works on every Lightning 2.x;
    # Trainer.fit's own weights_only argument exists from Lightning 2.6 on)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics["global_step"] = step = final_global_step(trainer)
    metrics["world_size"] = trainer.world_size
    # every optimizer step consumes one global batch per accumulated micro-batch
    metrics["samples_seen"] = step * trainer.accumulate_grad_batches * int(cfg.data.batch_size)
    write_json(run_dir / "metrics.json", metrics)
    return {"metrics": metrics, "trainer": trainer, "model": model, "run_dir": run_dir}


def final_global_step(trainer: pl.Trainer) -> int:
    """The trainer's global step. With ddp_spawn the main process's trainer did not train (Lightning sends back
    only the weights and metrics), so the step is read from the run's last.ckpt, written at the end."""
    ckpt = trainer.checkpoint_callback
    if trainer.global_step or ckpt is None or not ckpt.dirpath:
        return trainer.global_step
    last = Path(ckpt.dirpath) / "last.ckpt"
    if not last.is_file():
        return trainer.global_step
    return int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"])


@rank_zero_only
def _print(message: str) -> None:
    print(message, flush=True)
