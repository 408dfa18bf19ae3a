"""Build Lightning objects from the composed Hydra config: loggers, callbacks, strategy, trainer."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf


def build_loggers(cfg: DictConfig | None) -> list[Any]:
    """Instantiate the logger group. W&B: offline unless WANDB_MODE=online; skipped if WANDB_MODE=disabled."""
    loggers = []
    for name, node in (cfg or {}).items():
        if node is None:
            continue
        if name == "wandb":
            mode = os.environ.get("WANDB_MODE", "").lower()
            if mode == "disabled":
                continue
            node = OmegaConf.merge(node, {"offline": False} if mode == "online" else {})
            os.environ.setdefault("WANDB_SILENT", "true")
            Path(node.save_dir).mkdir(parents=True, exist_ok=True)
        loggers.append(hydra.utils.instantiate(node))
    return loggers


def build_callbacks(cfg: DictConfig | None, only: tuple[str, ...] | None = None) -> list[pl.Callback]:
    """Instantiate the callbacks group (or only the named entries, e.g. the progress bar for inference)."""
    return [
        hydra.utils.instantiate(node)
        for name, node in (cfg or {}).items()
        if node is not None and (only is None or name in only)
    ]


def build_strategy(cfg: DictConfig | None) -> Any:
    """``strategy`` group → "auto" or a DDPStrategy (gloo on CPU, nccl on GPU unless set)."""
    if cfg is None or cfg.get("name", "auto") == "auto":
        return "auto"
    from pytorch_lightning.strategies import DDPStrategy

    name = cfg.name
    if name not in ("ddp", "ddp_spawn"):
        raise ValueError(f"unknown strategy.name {name!r}; choose auto, ddp or ddp_spawn")
    return DDPStrategy(
        start_method="spawn" if name == "ddp_spawn" else "popen",
        process_group_backend=cfg.get("process_group_backend"),
        find_unused_parameters=bool(cfg.get("find_unused_parameters", False)),
        timeout=timedelta(seconds=int(cfg.get("timeout_s", 1800))),
    )


def build_trainer(cfg: DictConfig, run_dir: Path, **overrides: Any) -> pl.Trainer:
    """The Trainer of the ``trainer`` group with callbacks, loggers and strategy, rooted at the run dir."""
    kwargs = dict(
        callbacks=build_callbacks(cfg.get("callbacks")),
        logger=build_loggers(cfg.get("logger")),
        strategy=build_strategy(cfg.get("strategy")),
        default_root_dir=str(run_dir),
    )
    kwargs.update(overrides)
    return hydra.utils.instantiate(cfg.trainer, **kwargs)
