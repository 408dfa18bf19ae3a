"""The DiffAE network bundle: semantic encoder + conditional UNet decoder (+ optional latent MLP).

Only holds and wires the networks; the diffusion maths and samplers live elsewhere and call `encode` /
`forward`, passing z_sem explicitly so a sampler never re-runs the encoder per step (official inefficiency).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from rockgen.models.encoder import EncoderConfig, SemanticEncoder
from rockgen.models.latent_mlp import LatentMLPConfig, MLPSkipNet
from rockgen.models.nn import to_config
from rockgen.models.unet import ConditionalUNet, UNetConfig


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (unique) parameters of module; official tables use this / 1e6 as "M"."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class DiffAE(nn.Module):
    """Diffusion autoencoder: z_sem = encoder(x0); ε̂ = decoder(x_t, t, z_sem); latent_net models p(z_sem)."""

    def __init__(
        self,
        encoder: EncoderConfig | Mapping,
        decoder: UNetConfig | Mapping,
        latent_net: LatentMLPConfig | Mapping | None = None,
    ):
        super().__init__()
        enc_cfg, dec_cfg = to_config(encoder, EncoderConfig), to_config(decoder, UNetConfig)
        if dec_cfg.cond_channels != enc_cfg.out_channels:
            raise ValueError(
                f"UNetConfig.cond_channels={dec_cfg.cond_channels} must equal "
                f"EncoderConfig.out_channels={enc_cfg.out_channels} (the decoder consumes z_sem)"
            )
        self.encoder = SemanticEncoder(enc_cfg)
        self.decoder = ConditionalUNet(dec_cfg)
        self.latent_net = None
        if latent_net is not None:
            lat_cfg = to_config(latent_net, LatentMLPConfig)
            if lat_cfg.num_channels != enc_cfg.out_channels:
                raise ValueError(
                    f"LatentMLPConfig.num_channels={lat_cfg.num_channels} must equal "
                    f"EncoderConfig.out_channels={enc_cfg.out_channels} (the latent net models z_sem)"
                )
            self.latent_net = MLPSkipNet(lat_cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x0 (B, 3, H, W) in [-1, 1] -> z_sem (B, D)."""
        return self.encoder(x)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x_t (B, 3, H, W), t (B,) in [0, 999], cond = z_sem (B, D) -> ε̂ (B, 3, H, W)."""
        return self.decoder(x_t, t, cond)
