"""Tasks of the ``rockgen`` command (``rockgen.cli``): each is ``fn(cfg) -> dict`` of results, chosen by ``task=``."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)

TASKS = {
    "train": "rockgen.tasks.train:train",
    "convert": "rockgen.tasks.convert:convert",
    "compare": "rockgen.tasks.compare:compare",
    "vae_latents": "rockgen.tasks.vae_tasks:extract_latents",
    "vae_reconstruct": "rockgen.tasks.vae_tasks:reconstruct",
    "vae_interpolate": "rockgen.tasks.vae_tasks:interpolate",
    "infer_latents": "rockgen.tasks.infer_latents:infer_latents",
    "generate": "rockgen.tasks.generate:generate",
    "mosaic": "rockgen.tasks.mosaic:mosaic_task",
    "inpaint": "rockgen.tasks.inpaint:inpaint_task",
    "interpolate": "rockgen.tasks.interpolate:interpolate_task",
    "manipulate": "rockgen.tasks.manipulate:manipulate_task",
    "import_official": "rockgen.tasks.import_official:import_official_task",
    "explore": "rockgen.tasks.explore:explore_task",
}


def run_task(cfg: DictConfig) -> dict[str, Any]:
    """Dispatch ``cfg.task_name`` and print the run directory at the end (rank 0)."""
    name = cfg.task_name
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    from rockgen.lit.checkpoint import set_trusted

    # every checkpoint any task reads (ckpt_path, model.latent.autoenc_ckpt, compare's files) follows this
    set_trusted(bool(cfg.get("trusted_checkpoint", False)))
    log_lightning_to_run_log()
    module, fn = TASKS[name].split(":")
    result = getattr(importlib.import_module(module), fn)(cfg)
    _announce(Path(cfg.paths.run_dir))
    return result


LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")


def log_lightning_to_run_log() -> None:
    """Send Lightning's messages into the run's log file (``<run_dir>/<task>.log``) too.

    Hydra attaches its file handler to the root logger, but Lightning's loggers do not propagate to the root (they
    print through their own handler), so without this the file held only rockgen's few log lines.
    """
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if logger.propagate:
            continue
        for handler in files:
            if handler not in logger.handlers:
                logger.addHandler(handler)


@rank_zero_only
def _announce(run_dir: Path) -> None:
    log.info("Run directory: %s", run_dir.resolve())
    print(f"\nRun directory: {run_dir.resolve()}", flush=True)


@rank_zero_only
def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a results file (rank 0 only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
