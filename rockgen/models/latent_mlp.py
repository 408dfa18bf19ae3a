"""The latent DDIM denoiser: an MLP with input skips that predicts ε for normalised z_sem (stage 2 of DiffAE).

Re-implements the official `MLPSkipNet` (phizaz/diffae `model/latentnet.py:49-193`, template
`latent_mlp_2048_norm_10layers`): 54.11 M parameters with the default config.

Official key mapping: `time_embed.{0,2}.*` and `layers.{i}.{linear,norm}.*` are identical; the official
`layers.{i}.linear_emb.*` and `layers.{i}.cond_layers.1.*` are the *same* tensor registered twice -- load
`cond_layers.1.*` and drop `linear_emb.*`.

Conditioning (rockgen, not in the official code): with ``num_classes = K > 0`` a class embedding (K + 1 rows;
row K is the "no class" token used for label dropout and classifier-free guidance) and with ``zoom_embed`` a
sinusoidal embedding of a continuous log-scale are *added* to the time embedding, so they scale every hidden
layer exactly as t does. With K = 0 and no zoom the network and its state dict are the official ones.

Usage:
    net = MLPSkipNet(LatentMLPConfig())
    eps = net(z_t, t)    # z_t (B, 512), t (B,) in [0, 999] -> (B, 512)
    net = MLPSkipNet(LatentMLPConfig(num_classes=5))
    eps = net(z_t, t, cls=torch.tensor([0, 3, 5]))   # 5 = the null class (unconditional)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from rockgen.models.nn import as_tuple, timestep_embedding, to_config

# Sampling shortcut (see MLPSkipNet.forward); scripts/bench_latent.py turns it off to measure what it saves.
SHARE_TIMESTEP = True


@dataclass
class LatentMLPConfig:
    """MLPSkipNet hyper-parameters; defaults = official latent_mlp_2048_norm_10layers."""

    num_channels: int = 512  # z_sem width D
    hidden_channels: int = 2048  # H
    num_layers: int = 10  # official 10 (FFHQ/CelebA), 20 (horse/bedroom)
    time_channels: int = 64  # sinusoidal timestep-embedding width
    time_embed_channels: int = 512  # width of the time MLP output that scales every hidden layer
    skip_layers: Sequence[int] | None = None  # layers that also see cat([h, x]); None = all but layer 0
    use_norm: bool = True  # LayerNorm after the time scaling in hidden layers
    dropout: float = 0.0  # after the activation of hidden layers
    num_classes: int = 0  # K > 0: class-conditional (embedding of K classes + one null token)
    zoom_embed: bool = False  # a continuous zoom/scale input (e.g. log2 of metres per pixel) is embedded too


class MLPLNAct(nn.Module):
    """One MLP layer, official order: h = Linear(x); h·(1 + Linear(SiLU(t_emb))); LayerNorm; SiLU; Dropout."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_channels: int | None,
        use_norm: bool,
        activation: bool,
        dropout: float,
    ):
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels)
        self.cond_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_channels, out_channels)) if cond_channels else None
        self.norm = nn.LayerNorm(out_channels) if use_norm else nn.Identity()
        self.act = nn.SiLU() if activation else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if activation:
            # Official: Kaiming-normal (ReLU gain) for the SiLU layers, PyTorch default init otherwise.
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.kaiming_normal_(module.weight, a=0, nonlinearity="relu")

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """x (B, in), t_emb (B, cond) -> (B, out)."""
        h = self.linear(x)
        if self.cond_layers is not None:
            # Scale only, and *before* the norm (condition_bias = 1), as in the official code.
            h = h * (1 + self.cond_layers(t_emb))
        return self.dropout(self.act(self.norm(h)))


class MLPSkipNet(nn.Module):
    """ε̂ = f(z_t, t): layer 0 D->H, hidden cat([h, z_t]) -> H, last cat([h, z_t]) -> D (no cond/norm/act)."""

    def __init__(self, cfg: LatentMLPConfig):
        super().__init__()
        cfg = to_config(cfg, LatentMLPConfig)
        if cfg.num_layers < 2:
            raise ValueError(f"LatentMLPConfig.num_layers must be >= 2, got {cfg.num_layers}")
        for name in ("num_channels", "hidden_channels", "time_channels", "time_embed_channels"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"LatentMLPConfig.{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.num_classes < 0:
            raise ValueError(f"LatentMLPConfig.num_classes must be >= 0, got {cfg.num_classes}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"LatentMLPConfig.dropout must be in [0, 1), got {cfg.dropout}")
        skips = range(1, cfg.num_layers) if cfg.skip_layers is None else as_tuple(cfg.skip_layers)
        if any(not 0 <= i < cfg.num_layers for i in skips):
            raise ValueError(f"LatentMLPConfig.skip_layers must be in [0, {cfg.num_layers}), got {list(skips)}")
        self.cfg = replace(cfg, skip_layers=None if cfg.skip_layers is None else tuple(skips))
        self.skip = tuple(i in set(skips) for i in range(cfg.num_layers))

        d, hid, emb = cfg.num_channels, cfg.hidden_channels, cfg.time_embed_channels
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        # Optional conditions live beside the official modules, so an unconditional net's keys are unchanged.
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb) if cfg.num_classes > 0 else None
        self.zoom_embed = (
            nn.Sequential(nn.Linear(cfg.time_channels, emb), nn.SiLU(), nn.Linear(emb, emb)) if cfg.zoom_embed else None
        )
        self.layers = nn.ModuleList()
        for i in range(cfg.num_layers):
            last = i == cfg.num_layers - 1
            in_ch = (d if i == 0 else hid) + (d if self.skip[i] else 0)
            self.layers.append(
                MLPLNAct(
                    in_ch,
                    d if last else hid,
                    cond_channels=None if last else emb,
                    use_norm=cfg.use_norm and not last,
                    activation=not last,
                    dropout=0.0 if last else cfg.dropout,
                )
            )

    @property
    def null_class(self) -> int:
        """Index of the "no class" token (= num_classes): label dropout and the unconditional CFG branch."""
        return self.cfg.num_classes

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cls: torch.Tensor | None = None,
        zoom: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x = z̃_t (B, D) normalised noisy z_sem, t (B,) in [0, 999] -> ε̂ (B, D).

        cls (B,) int64 in [0, K] (K = null; None = all null) for a class-conditional net; zoom (B,) float
        (None = 0) for a zoom-conditional one. Passing a condition the net was not built for is an error.
        """
        uniform_t = t.ndim == 1 and t.shape[0] > 1 and not torch.is_grad_enabled()
        if SHARE_TIMESTEP and uniform_t and bool((t == t[0]).all()):
            # Sampling: one t for the whole batch. The time MLP and every layer's scale then run on one row
            # and broadcast, which saves about a sixth of the FLOPs of a step of the official network.
            t = t[:1]
        t_emb = timestep_embedding(t, self.cfg.time_channels).to(self.time_embed[0].weight.dtype)
        t_emb = self.time_embed(t_emb)  # (B or 1, time_embed_channels)
        t_emb = self._add_conditions(t_emb, x.shape[0], cls, zoom)
        h = x
        for layer, skip in zip(self.layers, self.skip, strict=True):
            # Re-inject the input so a deep MLP keeps direct access to z_t (official skip_layers).
            h = layer(torch.cat([h, x], dim=1) if skip else h, t_emb)
        return h

    def _add_conditions(
        self, t_emb: torch.Tensor, batch: int, cls: torch.Tensor | None, zoom: torch.Tensor | None
    ) -> torch.Tensor:
        """t_emb (B or 1, E) + class embedding + zoom embedding -> (B or 1, E)."""
        if cls is not None and self.class_embed is None:
            raise ValueError("this latent net is unconditional (LatentMLPConfig.num_classes=0): it takes no cls")
        if zoom is not None and self.zoom_embed is None:
            raise ValueError("this latent net has no zoom input (LatentMLPConfig.zoom_embed=False)")
        if self.class_embed is not None:
            if cls is None:
                cls = torch.full((batch,), self.null_class, dtype=torch.long, device=t_emb.device)
            if cls.shape != (batch,):
                raise ValueError(f"cls must have shape ({batch},), got {tuple(cls.shape)}")
            t_emb = t_emb + self.class_embed(cls.to(t_emb.device)).to(t_emb.dtype)
        if self.zoom_embed is not None:
            if zoom is None:
                zoom = torch.zeros(batch, device=t_emb.device)
            if zoom.shape != (batch,):
                raise ValueError(f"zoom must have shape ({batch},), got {tuple(zoom.shape)}")
            # log-scale values are O(1): spread them over the sinusoid's range as t spreads 0..999
            z_emb = timestep_embedding(zoom.float() * 100.0, self.cfg.time_channels).to(t_emb.dtype)
            t_emb = t_emb + self.zoom_embed(z_emb)
        return t_emb
