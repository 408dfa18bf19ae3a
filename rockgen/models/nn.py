"""Small building pieces shared by every rockgen network: timestep embedding, GroupNorm32, init helpers.

Pure PyTorch (no Lightning, no Hydra), so the networks can be imported, tested and benchmarked on their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32  # GroupNorm groups used everywhere in DiffAE; every normalised width must divide by it


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding t (B,) int or float -> (B, dim) float32, in the official DiffAE [cos, sin] order.

    freqs_i = max_period^(-i/half) for i < half = dim // 2; emb = [cos(t·freqs), sin(t·freqs)] (+ a zero
    column when dim is odd). Cos comes first (DiffAE/guided-diffusion), unlike the "Attention is all you
    need" [sin, cos]; swapping them would silently break loading official weights.
    """
    half = dim // 2
    # Always float32: under bf16 autocast, t up to 999 times the largest frequency would lose the phase.
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(max_period) / half))
    args = t.to(torch.float32)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) in float32, output in the input dtype: exact statistics under bf16 autocast."""

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__(GROUPS, num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Mean/var over C/32·H·W values must be accumulated in float32, never in bf16. The native kernels
        # already do that for bf16/fp16 inputs (CPU: mixed-type kernel with float32 affine params; CUDA: float
        # acc_type), equal to the official `x.float()` round trip up to rounding but without two full-size
        # copies (2-3x faster forward on CPU). Its CPU *backward* is 1.7-2.8x slower than the float32 one
        # (channels_last, 8-64 px), so when autograd records this op on CPU the round trip is faster overall.
        cpu_mixed = x.device.type == "cpu" and x.dtype != self.weight.dtype and self.weight.dtype == torch.float32
        if cpu_mixed and torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)
        if x.dtype == self.weight.dtype or cpu_mixed:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of module in place and return it (residual branches start as identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def as_tuple(values: Sequence[int] | int) -> tuple[int, ...]:
    """Turn an OmegaConf ListConfig / list / tuple (or one int) into a plain tuple of ints."""
    if isinstance(values, int):
        return (values,)
    return tuple(int(v) for v in values)


def check_ladder(
    name: str,
    image_size: int,
    model_channels: int,
    channel_mult: Sequence[int],
    attention_resolutions: Sequence[int],
    num_res_blocks: int,
    num_heads: int,
) -> None:
    """Raise ValueError naming the bad field of a UNet-style resolution/channel ladder."""
    if not channel_mult:
        raise ValueError(f"{name}.channel_mult must not be empty")
    if num_res_blocks < 1:
        raise ValueError(f"{name}.num_res_blocks must be >= 1, got {num_res_blocks}")
    levels = len(channel_mult)
    if image_size <= 0 or image_size % 2 ** (levels - 1):
        raise ValueError(
            f"{name}.image_size={image_size} must be a multiple of 2**(levels-1) = {2 ** (levels - 1)} "
            f"for len(channel_mult) = {levels}"
        )
    for mult in channel_mult:
        width = model_channels * mult
        if width <= 0 or width % GROUPS:
            raise ValueError(
                f"{name}.model_channels*channel_mult = {model_channels}*{mult} = {width} must be a positive "
                f"multiple of {GROUPS} (GroupNorm groups)"
            )
    resolutions = [image_size // 2**i for i in range(levels)]
    for res in attention_resolutions:
        # The official code silently ignores an unreachable resolution; here it is almost surely a typo.
        if res not in resolutions:
            raise ValueError(f"{name}.attention_resolutions contains {res}, not one of the levels {resolutions}")
    if num_heads < 1:
        raise ValueError(f"{name}.num_heads must be >= 1, got {num_heads}")
    for level, (res, mult) in enumerate(zip(resolutions, channel_mult, strict=True)):
        # The middle block always has attention at the last level's width.
        has_attention = res in attention_resolutions or level == levels - 1
        if has_attention and (model_channels * mult) % num_heads:
            raise ValueError(f"{name}.num_heads={num_heads} must divide the attention width {model_channels * mult}")


def to_config(cfg, cls):
    """Return cfg as a cls dataclass; accepts an instance or any mapping (dict, OmegaConf DictConfig)."""
    if isinstance(cfg, cls):
        return cfg
    if isinstance(cfg, Mapping):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} got unknown fields {unknown}; known fields: {sorted(known)}")
        return cls(**{k: cfg[k] for k in cfg})
    raise TypeError(f"expected {cls.__name__} or a mapping, got {type(cfg).__name__}")
