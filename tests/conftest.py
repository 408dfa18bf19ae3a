"""Test environment: no network, no pretrained weights, W&B off, caches and logs in temporary folders."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="rockgen-tests-"))
# Set before anything imports torch/wandb, and inherited by subprocesses (CLI and DDP tests).
os.environ["TORCH_HOME"] = str(_TMP / "torch_home")  # empty: proves everything runs without weights
os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_DIR"] = str(_TMP / "wandb")
os.environ["ROCKGEN_CACHE_DIR"] = str(_TMP / "cache")
os.environ["ROCKGEN_LOG_DIR"] = str(_TMP / "logs")
os.environ.setdefault("OMP_NUM_THREADS", "2")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def compose_config(overrides: list[str], run_dir: Path):
    """Compose run.yaml as the CLI would (templates registered), with the run directory at ``run_dir``."""
    from hydra import compose, initialize_config_dir

    from rockgen.presets import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "rockgen" / "configs"), version_base="1.3"):
        return compose("run", overrides=[f"paths.run_dir={run_dir}", *overrides])


TINY = [
    "logger=csv",
    "data.num_workers=0",
    "data.demo_num_per_class=6",
    "data.demo_size=48",
    "data.batch_size=4",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",  # the default (auto) picks bf16-mixed on native-bf16 CPUs: tests pin fp32
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "callbacks.checkpoint.every_n_train_steps=2",
    "model.evaluation.T=[2]",
    "model.evaluation.grid_images=2",
    "data.val_max_items=4",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides that shrink the demo preset to a few seconds of training."""
    return list(TINY)
