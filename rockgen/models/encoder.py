"""The DiffAE semantic encoder: a half-UNet that maps an image to the semantic code z_sem.

Re-implements the official `BeatGANsEncoderModel` with `use_time_condition=False` and pool
`'adaptivenonzero'` (phizaz/diffae `model/unet.py:377-535`). Because the official ResBlock only builds its
`out_layers` when it has a condition, every encoder ResBlock is a single-conv block x + conv3x3(SiLU(GN(x)));
we reproduce that so official encoder weights load under the same names (`input_blocks.*`, `middle_block.*`,
`out.3.*`). Official: no regulariser and no normalisation on z_sem (it is whatever the last 1x1 conv outputs);
``z_norm`` optionally standardises it (rockgen, see EncoderConfig).

Usage:
    enc = SemanticEncoder(EncoderConfig(image_size=64))
    z_sem = enc(x0)    # x0 (B, 3, 64, 64) in [-1, 1] -> (B, 512)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from rockgen.models.blocks import ResBlock, build_middle_block, checked_ladder_config, down_path_of, run_block
from rockgen.models.nn import GroupNorm32


@dataclass
class EncoderConfig:
    """Semantic-encoder hyper-parameters; defaults = official ffhq64_autoenc encoder (rock64)."""

    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 64
    channel_mult: Sequence[int] = (1, 2, 4, 8, 8)  # official: one level deeper than the decoder (down to 4x4)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (16,)
    out_channels: int = 512  # z_sem width; must equal the decoder's cond_channels
    dropout: float = 0.0  # before each single conv; 0.0 = official (its encoder blocks have no dropout)
    num_heads: int = 1
    resblock_updown: bool = True
    gradient_checkpointing: bool = False
    # rockgen: normalisation of z_sem. none (official) | batch: each dimension standardised over the batch
    # (BatchNorm1d without affine; running statistics in eval), so z_sem cannot collapse to a constant the decoder
    # uses as a bias | layer: each code standardised over its dimensions (LayerNorm without affine).
    z_norm: str = "none"
    # rockgen: how the last feature map (C, s, s) becomes z_sem. pool (official): GN -> SiLU -> global average
    # pool -> 1x1 conv, which keeps little of where things are | flatten: GN -> SiLU -> flatten -> Linear(C·s·s),
    # which keeps the position (needs inputs of exactly image_size; for the decoder's spatial_cond path).
    head: str = "pool"


Z_NORMS = ("none", "batch", "layer")
HEADS = ("pool", "flatten")


class SemanticEncoder(nn.Module):
    """z_sem = Enc(x0): down path + middle block -> GN -> SiLU -> global avg pool -> 1x1 conv -> (B, out)
    (head=flatten: -> flatten -> Linear)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        cfg = checked_ladder_config(cfg, EncoderConfig, positive=("in_channels", "out_channels"))
        if cfg.z_norm not in Z_NORMS:
            raise ValueError(f"EncoderConfig.z_norm must be one of {Z_NORMS}, got {cfg.z_norm!r}")
        if cfg.head not in HEADS:
            raise ValueError(f"EncoderConfig.head must be one of {HEADS}, got {cfg.head!r}")
        self.cfg = cfg
        self.gradient_checkpointing = cfg.gradient_checkpointing

        # No time condition at all: emb_channels=None selects the official single-conv ResBlock.
        make_block = partial(ResBlock, emb_channels=None, cond_channels=None, dropout=cfg.dropout)
        self.input_blocks, _, ch = down_path_of(cfg, make_block)
        self.middle_block = build_middle_block(make_block, ch, cfg.num_heads)
        if cfg.head == "pool":
            self.out = nn.Sequential(
                GroupNorm32(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d(1),  # any input size -> (B, C, 1, 1)
                nn.Conv2d(ch, cfg.out_channels, 1),
                nn.Flatten(),  # (B, out_channels)
            )
        else:
            side = cfg.image_size // 2 ** (len(cfg.channel_mult) - 1)
            self.out = nn.Sequential(
                GroupNorm32(ch), nn.SiLU(), nn.Flatten(), nn.Linear(ch * side**2, cfg.out_channels)
            )
        # a separate attribute (not out.5) keeps the official key layout; Identity holds no state
        self.z_norm = {
            "none": nn.Identity(),
            "batch": nn.BatchNorm1d(cfg.out_channels, affine=False),
            "layer": nn.LayerNorm(cfg.out_channels, elementwise_affine=False),
        }[cfg.z_norm]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1] -> z_sem (B, out_channels)."""
        if self.cfg.head == "flatten" and tuple(x.shape[-2:]) != (self.cfg.image_size,) * 2:
            raise ValueError(
                f"SemanticEncoder with head=flatten encodes {self.cfg.image_size}-px tiles only, got {tuple(x.shape)}"
            )
        ckpt = self.gradient_checkpointing and self.training
        h = x
        for block in self.input_blocks:
            h = run_block(block, h, None, None, ckpt)
        h = run_block(self.middle_block, h, None, None, ckpt)
        return self.z_norm(self.out(h))
