"""Helpers of the latent-space tests: a random demo-sized DiffAE whose outputs depend on z_sem and x_T.

A freshly built DiffAE predicts ε̂ = 0 everywhere (zero-initialised output layers, as in the official code), so
neither z_sem nor x_T would matter and interpolation tests would pass vacuously. ``random_diffae`` draws
those layers too, making the decoder a random but fully wired function of (x_t, t, z_sem).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rockgen import presets as templates
from rockgen.data.demo import write_demo_dataset
from rockgen.lit.common import CLASS_KEY
from rockgen.lit.diffae import LitModel


def random_diffae(seed: int = 0) -> LitModel:
    """The demo preset's LitModel (32 px, z_sem of 512) with random weights everywhere, in eval mode."""
    torch.manual_seed(seed)
    args = {k: v for k, v in templates.presets()["demo"]["model"].items() if k != "_target_"}
    # ε-prediction as the official DiffAE (the demo preset predicts v): the thresholds of the latent-space tests
    # were set for this parameterisation of a random network
    args["diffusion"] = {**args["diffusion"], "prediction": "eps"}
    model = LitModel(**args)
    with torch.no_grad():
        for p in model.model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)
    model.ema_model.load_state_dict(model.model.state_dict())
    return model.eval()


def save_checkpoint(model: LitModel, path: Path) -> Path:
    """A checkpoint file as ``load_checkpoint_module`` reads it (what Lightning writes, minus the trainer state)."""
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "global_step": 0,
            CLASS_KEY: "experiment:LitModel",
        },
        path,
    )
    return path


def demo_tiles(folder: Path, per_class: int = 2, size: int = 40) -> dict[str, list[Path]]:
    """Demo rock PNGs ``folder/<class>/<class>_000i.png`` → {class: files}."""
    root = write_demo_dataset(folder, num_per_class=per_class, size=size, seed=0)
    return {d.name: sorted(d.glob("*.png")) for d in sorted(root.iterdir()) if d.is_dir()}
