"""Build Lightning objects from the composed Hydra config: loggers, callbacks, strategy, trainer."""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from rockgen.precision import resolve_precision

CLUSTERS = ("auto", "slurm", "torchelastic", "lightning")


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


def build_cluster_environment(name: str) -> Any:
    """``strategy.cluster`` → a Lightning ClusterEnvironment, or None to let Lightning detect one.

    SLURM jobs get ``SLURMEnvironment(auto_requeue=False)`` in both cases: requeueing is done by
    ``rockgen.callbacks.Preemption`` at a step boundary, not inside a signal handler.
    """
    from lightning_fabric.plugins.environments import (
        LightningEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if name not in CLUSTERS:
        raise ValueError(f"unknown strategy.cluster {name!r}; choose one of {CLUSTERS}")
    if name == "lightning":
        return LightningEnvironment()
    if name == "torchelastic":
        if not TorchElasticEnvironment.detect():
            raise ValueError(
                "strategy.cluster=torchelastic but this process was not started by torchrun "
                "(RANK/LOCAL_RANK/WORLD_SIZE unset): launch with scripts/train_torchrun.sh"
            )
        return TorchElasticEnvironment()
    if name == "slurm" and not SLURMEnvironment.detect():
        raise ValueError(
            "strategy.cluster=slurm but this is not a SLURM job step (SLURM_NTASKS unset, or an interactive "
            "job): submit with `sbatch scripts/train_slurm.sh ...` (each rank started by srun)"
        )
    if name == "slurm":
        return SLURMEnvironment(auto_requeue=False)
    if TorchElasticEnvironment.detect():  # torchrun inside a SLURM allocation: torchrun's ranks, not SLURM's
        return TorchElasticEnvironment()
    if SLURMEnvironment.detect():
        return SLURMEnvironment(auto_requeue=False)
    return None


def build_strategy(cfg: DictConfig | None) -> Any:
    """``strategy`` group → "auto" (one process) or a DDPStrategy (gloo on CPU, nccl on GPU unless set)."""
    if cfg is None or cfg.get("name", "auto") in ("auto", "single"):
        return "auto"
    from pytorch_lightning.strategies import DDPStrategy

    name = cfg.name
    if name not in ("ddp", "ddp_spawn"):
        raise ValueError(f"unknown strategy.name {name!r}; choose single, ddp or ddp_spawn")
    return DDPStrategy(
        start_method="spawn" if name == "ddp_spawn" else "popen",
        cluster_environment=build_cluster_environment(cfg.get("cluster", "auto")),
        process_group_backend=cfg.get("process_group_backend"),
        find_unused_parameters=bool(cfg.get("find_unused_parameters", False)),
        timeout=timedelta(seconds=int(cfg.get("timeout_s", 1800))),
    )


def _check_single_device(strategy_cfg: DictConfig | None, trainer_cfg: DictConfig) -> None:
    if strategy_cfg is not None and strategy_cfg.get("name", "auto") not in ("auto", "single"):
        return
    devices, nodes = trainer_cfg.get("devices", 1), int(trainer_cfg.get("num_nodes", 1))
    many = (isinstance(devices, int) and devices > 1) or (OmegaConf.is_list(devices) and len(devices) > 1)
    if many or nodes > 1:
        raise ValueError(
            f"strategy=single runs one process on one device, but trainer.devices={devices} and "
            f"trainer.num_nodes={nodes}: use strategy=ddp (e.g. scripts/train.sh N ...) for several devices"
        )


def build_trainer(cfg: DictConfig, run_dir: Path, **overrides: Any) -> pl.Trainer:
    """The Trainer of the ``trainer`` group with callbacks, loggers and strategy, rooted at the run dir.

    Checkpoints are written and read by ``SafeCheckpointIO``: atomic writes, ``weights_only`` reads unless
    ``trusted_checkpoint=true``.
    """
    from pytorch_lightning.callbacks import ProgressBar

    from rockgen.lit.checkpoint import SafeCheckpointIO

    # rockgen's epoch-level validation scores are torchmetrics results, already synchronised across ranks:
    # Lightning's advice to all-reduce them again (once per key under DDP) is noise
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting")
    _check_single_device(cfg.get("strategy"), cfg.trainer)
    callbacks = build_callbacks(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a progress bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    kwargs = dict(
        callbacks=callbacks,
        logger=build_loggers(cfg.get("logger")),
        strategy=build_strategy(cfg.get("strategy")),
        default_root_dir=str(run_dir),
        plugins=[SafeCheckpointIO(trusted=bool(cfg.get("trusted_checkpoint", False)))],
        precision=resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator")),
    )
    kwargs.update(overrides)
    return hydra.utils.instantiate(cfg.trainer, **kwargs)
