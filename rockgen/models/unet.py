"""The DiffAE decoder: a UNet ε-predictor conditioned on the timestep and, in every ResBlock, on z_sem.

Re-implements the official `BeatGANsAutoencModel` decoder (phizaz/diffae `model/unet.py:98-293`,
`model/unet_autoenc.py`); with `cond_channels=None` it is the plain `BeatGANsUNetModel` used by the pixel-DDPM
baseline.

Official checkpoint -> rockgen key mapping (everything else is identical, block by block):
    time_embed.time_embed.{0,2}.{weight,bias}  ->  time_embed.{0,2}.{weight,bias}
        (the official base class first builds its own `time_embed`, then `BeatGANsAutoencModel` replaces it by
        `TimeStyleSeperateEmbed`; the dead one never reaches the state dict and is not built here)
    time_embed.style.*                           ->  (none: nn.Identity, no parameters)
    input_blocks.* / middle_block.* / output_blocks.* / out.*  ->  same names
    (inside blocks: in_layers.{0,2}, emb_layers.1, cond_emb_layers.1, out_layers.{0,3}, skip_connection,
     norm, qkv, proj_out -- same shapes; the official `QKVAttentionLegacy` layout is kept for any head count)
In `DiffAE` the decoder sits under `decoder.`, the encoder under `encoder.` (same as official), e.g.
`ema_model.input_blocks.1.0.in_layers.2.weight` -> `decoder.input_blocks.1.0.in_layers.2.weight`.

Parameter counts (true millions; reproduce the official table with the base-class dead `time_embed` excluded):
    rock64  (img 64,  ch 64,  mult 1,2,4,8)         71.52 M   (+ encoder 19.32 M = 90.84 M)
    rock128 (img 128, ch 128, mult 1,1,2,3,4)       103.87 M  (+ encoder 24.67 M = 128.55 M)
    rock256 (img 256, ch 128, mult 1,1,2,2,4,4)     138.34 M  (+ encoder 30.15 M = 168.49 M)

Proposal for rock512 (no official preset): img 512, ch 64, mult (1,2,2,4,4,8,8), attention only at 16,
encoder mult (1,2,2,4,4,8,8,8). Widths per resolution 512:64, 256:128, 128:128, 64:256, 32:256, 16:512,
8:512, i.e. exactly the rock256 ladder with one cheap 64-wide level in front: 139.86 M (+ encoder 30.19 M =
170.06 M).
Cost per image (meta-device count, training, no checkpointing): decoder 986 GFLOP forward, saved activations
3.6 GiB bf16 / 7.2 GiB fp32 (encoder +0.5 / +1.0 GiB); with gradient_checkpointing ~0.6 + 0.15 GiB bf16 plus
one block's recompute. The obvious alternative, ch 128 mult (1,1,1,2,2,4,4) (rock256 + a 128-wide 512² level),
has about the same parameters (172.9 M total) but costs 1807 GFLOP and 5.3 + 0.8 GiB bf16 per image: the
first level dominates time and memory and at 512² it mostly sees fine texture, so 64 channels are spent there.

Usage:
    net = ConditionalUNet(UNetConfig(image_size=64))
    eps = net(x_t, t, cond=z_sem)  # x_t (B, 3, 64, 64), t (B,) in [0, 999], z_sem (B, 512) -> (B, 3, 64, 64)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from rockgen.models.blocks import (
    AttentionBlock,
    CondSequential,
    ResBlock,
    Upsample,
    build_down_path,
    build_middle_block,
    run_block,
)
from rockgen.models.nn import GroupNorm32, as_tuple, check_ladder, timestep_embedding, to_config, zero_module


@dataclass
class UNetConfig:
    """Decoder hyper-parameters; defaults = official ffhq64_autoenc decoder (rock64)."""

    image_size: int = 64  # square input side; must divide by 2**(len(channel_mult)-1)
    in_channels: int = 3
    out_channels: int = 3  # ε̂ has the image's channels (model_mean_type = eps)
    model_channels: int = 64  # base width; also the sinusoidal timestep-embedding width (official)
    channel_mult: Sequence[int] = (
        1,
        2,
        4,
        8,
    )  # width = model_channels·mult per level, level l at image_size/2^l
    num_res_blocks: int = 2  # per level on the way down; the way up has one more (it also eats the down block)
    attention_resolutions: Sequence[int] = (16,)  # resolutions (pixels, not levels) with self-attention
    dropout: float = 0.1  # in every decoder ResBlock's out_layers (official 0.1)
    embed_channels: int = 512  # time-embedding width fed to each ResBlock
    cond_channels: int | None = 512  # z_sem width; None = unconditional UNet (pixel-DDPM baseline)
    num_heads: int = 1  # official 1; the legacy qkv layout is kept, so any head count loads
    resblock_updown: bool = True  # BigGAN up/down ResBlocks (official) instead of (strided) conv resamplers
    gradient_checkpointing: bool = False  # keep only block inputs: ~5x less activation memory, ~30% slower
    num_classes: int = 0  # K > 0: a class embedding (K classes + a null token) added to the time embedding
    # rockgen, off (0) in every official preset: side S of a coarse z_sem map, Linear(z_sem) -> (C, S, S), upsampled
    # to and added to the features entering the middle block (the lowest resolution). AdaGN gives z_sem only
    # channel-wise scales, so without it a layout must come from x_t; with it z_sem can carry one.
    spatial_cond: int = 0


class ConditionalUNet(nn.Module):
    """Denoising UNet: (x_t (B, C, H, W), t (B,), cond (B, cond_channels) | None) -> (B, C_out, H, W): ε̂, x̂0 or v̂."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        cfg = to_config(cfg, UNetConfig)
        mult, attn = as_tuple(cfg.channel_mult), as_tuple(cfg.attention_resolutions)
        check_ladder("UNetConfig", cfg.image_size, cfg.model_channels, mult, attn, cfg.num_res_blocks, cfg.num_heads)
        for name in ("in_channels", "out_channels", "embed_channels"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.cond_channels is not None and cfg.cond_channels < 1:
            raise ValueError(f"UNetConfig.cond_channels must be >= 1 or None, got {cfg.cond_channels}")
        if cfg.num_classes < 0:
            raise ValueError(f"UNetConfig.num_classes must be >= 0, got {cfg.num_classes}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {cfg.dropout}")
        lowest = cfg.image_size // 2 ** (len(mult) - 1)
        if cfg.spatial_cond and (cfg.cond_channels is None or cfg.spatial_cond < 0 or lowest % cfg.spatial_cond):
            raise ValueError(
                f"UNetConfig.spatial_cond must be 0 (off) or divide the lowest resolution {lowest} of a z_sem-"
                f"conditioned net (cond_channels set), got {cfg.spatial_cond} (cond_channels={cfg.cond_channels})"
            )
        # Keep a clean copy (plain tuples, no OmegaConf containers) so the net pickles and prints simply.
        self.cfg = cfg = replace(cfg, channel_mult=mult, attention_resolutions=attn)
        self.gradient_checkpointing = cfg.gradient_checkpointing

        mc, emb = cfg.model_channels, cfg.embed_channels
        # Official TimeStyleSeperateEmbed.time_embed: sinusoid(model_channels) -> Linear -> SiLU -> Linear.
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        # Class-conditional pixel baseline (rockgen): row K is the null token of classifier-free guidance.
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb) if cfg.num_classes > 0 else None

        make_block = partial(ResBlock, emb_channels=emb, cond_channels=cfg.cond_channels, dropout=cfg.dropout)
        self.input_blocks, widths, ch = build_down_path(
            make_block,
            cfg.in_channels,
            cfg.image_size,
            mc,
            mult,
            cfg.num_res_blocks,
            attn,
            cfg.num_heads,
            cfg.resblock_updown,
        )
        self.middle_block = build_middle_block(make_block, ch, cfg.num_heads)
        # Zero-initialised, so switching it on starts from the plain network (the guided-diffusion convention for
        # residual branches); Linear(cond) -> (ch · S · S). Absent when off: the official state dict is unchanged.
        self.spatial_cond = (
            zero_module(nn.Linear(cfg.cond_channels, ch * cfg.spatial_cond**2)) if cfg.spatial_cond else None
        )

        # Way up: per level (deepest first) num_res_blocks + 1 ResBlocks, each concatenating one lateral
        # (popped LIFO from the down path's outputs), then an up block except at level 0.
        self.output_blocks = nn.ModuleList()
        resolution = cfg.image_size // 2 ** (len(mult) - 1)
        for level in reversed(range(len(mult))):
            width = mc * mult[level]
            for i in range(cfg.num_res_blocks + 1):
                layers: list[nn.Module] = [make_block(ch + widths.pop(), width)]
                ch = width
                if resolution in attn:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                if level and i == cfg.num_res_blocks:
                    layers.append(make_block(ch, ch, up=True) if cfg.resblock_updown else Upsample(ch))
                    resolution *= 2
                self.output_blocks.append(CondSequential(*layers))
        assert not widths, "every lateral must be consumed exactly once"

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, cls: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, H, W), t (B,) long/float original 1000-step index, cond z_sem (B, cond_channels) -> ε̂.

        cls (B,) int64 in [0, num_classes] (num_classes = null; None = all null) for a class-conditional net.
        """
        if self.cfg.cond_channels is None:
            if cond is not None:
                raise ValueError("ConditionalUNet: cond given, but the net is unconditional (cond_channels=None)")
        elif cond is None:
            raise ValueError(
                f"ConditionalUNet: z_sem cond (B, {self.cfg.cond_channels}) is required (cond_channels set)"
            )
        # The sinusoid is float32; cast once to the parameters' dtype so a fully bf16 model also works.
        t_emb = timestep_embedding(t, self.cfg.model_channels).to(self.time_embed[0].weight.dtype)
        emb = self.time_embed(t_emb)  # (B, embed_channels)
        if cls is not None and self.class_embed is None:
            raise ValueError("ConditionalUNet: cls given, but the net has no classes (UNetConfig.num_classes=0)")
        if self.class_embed is not None:
            if cls is None:
                cls = torch.full((x.shape[0],), self.cfg.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(cls).to(emb.dtype)
        ckpt = self.gradient_checkpointing and self.training

        laterals = []
        h = x
        for block in self.input_blocks:
            h = run_block(block, h, emb, cond, ckpt)
            laterals.append(h)
        if self.spatial_cond is not None:
            h = h + self._spatial_map(cond, h)
        h = run_block(self.middle_block, h, emb, cond, ckpt)
        for block in self.output_blocks:
            h = run_block(block, torch.cat([h, laterals.pop()], dim=1), emb, cond, ckpt)
        return self.out(h)

    def _spatial_map(self, cond: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """z_sem (B, D) -> its coarse map (B, C, S, S), nearest-upsampled to h's (B, C, H, W), in h's dtype/layout."""
        side = self.cfg.spatial_cond
        m = self.spatial_cond(cond.to(self.spatial_cond.weight.dtype)).view(cond.shape[0], -1, side, side)
        if side != h.shape[-1]:
            m = F.interpolate(m, size=h.shape[-2:], mode="nearest")
        return m.to(h.dtype)
