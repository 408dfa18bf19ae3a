"""``task=import_official``: an official DiffAE checkpoint → a rockgen checkpoint in the run directory.

    python run.py task=import_official official_ckpt=checkpoints/ffhq256_autoenc/last.ckpt run_name=ffhq256

Writes ``<run_dir>/checkpoints/last.ckpt`` (load it with ``LitModel.load_from_checkpoint`` or pass it as
``ckpt_path=`` to any task) and ``<run_dir>/import_report.json`` (source, keys, mapping, assumptions).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rockgen.official import import_official
from rockgen.tasks import write_json

log = logging.getLogger(__name__)


def import_official_task(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("official_ckpt"):
        raise ValueError(
            "official_ckpt is not set: python run.py task=import_official official_ckpt=/path/to/last.ckpt"
        )
    run_dir = Path(cfg.paths.run_dir)
    out = run_dir / "checkpoints" / "last.ckpt"
    model = import_official(cfg.official_ckpt, out, trusted=bool(cfg.get("trusted_checkpoint", False)))
    record = model.official_import
    report = {
        **{k: v for k, v in record.items() if k != "official_hyper_parameters"},
        "checkpoint": str(out),
        "rockgen_hyper_parameters": dict(model.hparams),
        "official_hyper_parameters": record["official_hyper_parameters"],
    }
    write_json(run_dir / "import_report.json", report)
    can = "encode, encode_stochastic, render" + (", sample (task=generate)" if record["latent_net"] else "")
    log.info(
        "imported %s (%s, step %d): %d official keys -> %d rockgen keys; can %s",
        record["source"],
        record["name"] or "unnamed",
        record["global_step"],
        record["num_official_keys"],
        record["num_rockgen_keys"],
        can,
    )
    print(f"rockgen checkpoint: {out}\nit can {can}", flush=True)
    return {"checkpoint": str(out), "latent_net": record["latent_net"]}
