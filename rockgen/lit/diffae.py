"""The DiffAE LightningModule ``LitModel``: the one ``MethodModule`` driving the DiffAE method of ``model.stage``.

Public API as in the official DiffAE (images in [-1, 1] in, [0, 1] out; see ``rockgen.methods.diffae``)::

    model = LitModel.load_from_checkpoint("logs/train/demo/checkpoints/last.ckpt", map_location="cpu")
    z_sem = model.encode(x)                          # (B, 3, H, W) in [-1, 1] → (B, 512)
    x_T = model.encode_stochastic(x, z_sem, T=50)    # DDIM inversion → (B, 3, H, W)
    rec = model.render(x_T, z_sem, T=50)             # DDIM decoding → (B, 3, H, W) in [0, 1]
    new = model.sample(16, "cpu", T=20, T_latent=20) # latent DDIM → decoder (latent-stage checkpoints)

Stage ``autoenc`` trains encoder + decoder (``DiffAEAutoencoder``), stage ``latent`` the latent DDIM with the
autoencoder frozen (``DiffAELatentDDIM``): ``rockgen.methods.diffae_stages``.
"""

from __future__ import annotations

from typing import Any

from rockgen.lit.module import MethodModule
from rockgen.methods.diffae_stages import diffae_method


class LitModel(MethodModule):
    """DiffAE (Preechakul et al., CVPR 2022); arguments: those of ``rockgen.methods.diffae.DiffAEMethod``
    (unet, encoder, diffusion, optim, ema, evaluation, lpips_weight, channels_last, latent, stage)."""

    def __init__(self, *args: Any, **hparams: Any) -> None:
        super().__init__(diffae_method(*args, **hparams))
