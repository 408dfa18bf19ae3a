"""What a trained model can generate and reconstruct: tasks iterate over these instead of branching on its kind.

Every method (``rockgen.methods``: DiffAE autoencoder / latent DDIM, pixel DDPM, VAE) declares

    method_key      "diffae" | "pixel" | "vae" (the checkpoint option name, ``compare.<key>_ckpt``)
    method_label    "DiffAE" | "Pixel DDPM" | "VAE" (tables)
    preset_method   "autoenc" | "latent" | "pixel" | "vae" (the template suffix: ``rock64_<preset_method>``)
    sample(N, device, T, T_latent, seed, **options)      N new images; ``sample_options`` names the options
    sample_unavailable() -> str | None                   why this checkpoint cannot sample (None: it can)
    generation_modes(**options) -> [GenerationMode]      ways to draw new images
    reconstruction_codes(**options) -> [ReconstructionCode]   ways to reproduce a given image (may be empty)

and optionally ``encode`` / ``reconstruct`` / ``render``. ``task=compare`` times every generation mode, scores
FID/KID on the first one and PSNR/SSIM on every reconstruction code, without knowing which model it holds;
``task=generate`` and the explorer pass only the options a method's ``sample_options`` lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GenerationMode:
    """One way to draw images: ``run(n, seed, warm)`` → (n, 3, S, S) in [0, 1].

    ``warm=True`` runs the same shapes with 2 steps (a warm-up). ``cost_scale`` > 1: a timed call only probes the
    real cost, which is ``cost_scale`` × the call (e.g. DDPM-1000 timed on 10 steps); such a mode is not used
    for FID/KID.
    """

    name: str
    note: str
    run: Callable[[int, int, bool], torch.Tensor]
    cost_scale: float = 1.0


@dataclass(frozen=True)
class ReconstructionCode:
    """One way to reproduce images: ``run(x, generator)`` with x (B, 3, S, S) in [-1, 1] → (B, 3, S, S) in [0, 1]."""

    name: str
    run: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
