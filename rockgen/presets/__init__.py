"""Presets (``template=<name>``): resolution × method, plus named recipes, registered in Hydra's ConfigStore.

    demo, demo_latent, demo_pixel, demo_vae   tiny models on the embedded demo tiles, minutes on 2 CPU cores
    rock{64,128,256}[_autoenc]                = official ffhq64_autoenc (90.84 M params), ffhq128_autoenc_130M
                                                (128.55 M), ffhq256_autoenc (168.49 M)
    rock512[_autoenc]                         rockgen's 512-px design (170.06 M, see ``scales``)
    rockN_latent                              stage 2: official latent DDIM; set model.latent.autoenc_ckpt=...
                                              and model.latent.latents_path=...
    rockN_pixel                               pixel-space DDPM baseline: the same UNets without z_sem
    rockN_vae                                 transformer VAE-style autoencoder baseline

Each preset is built from explicit values (``scales`` × ``methods``, or a ``recipes`` function), and any value
can still be overridden (``model.optim.lr=2e-5``). Batch sizes are global (split over the DDP world size).
"""

from __future__ import annotations

import os
import time
from typing import Any

from rockgen.presets import methods, recipes
from rockgen.presets.scales import RESOLUTIONS, Scale, scale
from rockgen.presets.schema import Preset

__all__ = ["RESOLUTIONS", "Preset", "Scale", "build_presets", "presets", "register", "run_stamp", "scale"]


def build_presets() -> dict[str, Preset]:
    """Every preset by name (aliases ``rockN`` = ``rockN_autoenc``)."""
    demo = recipes.demo()
    out = {p.name: p for p in (demo, recipes.demo_pixel(), recipes.demo_vae(), recipes.demo_latent(demo))}
    for res in RESOLUTIONS:
        s = scale(res)
        auto = methods.autoenc(s)
        for p in (auto, methods.official_latent(auto, res), methods.pixel(s), methods.vae(s)):
            out[p.name] = p
        out[f"rock{res}"] = auto
    return out


def presets() -> dict[str, dict[str, Any]]:
    """Every preset's Hydra node by name (what ``template=<name>`` merges into the config)."""
    return {name: p.node() for name, p in build_presets().items()}


def run_stamp() -> str:
    """``${run_stamp:}`` in run names: one value for every rank of a job. ``$ROCKGEN_RUN_STAMP`` when set (the
    torchrun script sets it for its ranks), ``job<id>`` inside SLURM, else the local time (``%Y%m%d-%H%M%S``).
    A plain ``${now:...}`` could differ between ranks started a second apart and split one run's outputs."""
    if os.environ.get("ROCKGEN_RUN_STAMP"):
        return os.environ["ROCKGEN_RUN_STAMP"]
    if os.environ.get("SLURM_JOB_ID"):
        step = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"job{os.environ['SLURM_JOB_ID']}" + (f"-{step}" if step else "")
    return time.strftime("%Y%m%d-%H%M%S")


def register() -> None:
    """Register every preset as ``template=<name>`` (package ``_global_``) and the ``run_stamp`` resolver."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    cs = ConfigStore.instance()
    for name, node in presets().items():
        cs.store(group="template", name=name, node=node, package="_global_")
