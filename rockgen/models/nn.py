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


# Below this many pixels (H·W) the native channels_last GroupNorm backward is as fast as ours (see
# ``_GroupNormChannelsLast``); measured at 1 thread: 256 ch at 16² native 1.1 ms vs 2.3 ms, 128 ch at 32²
# native 13 ms vs 3 ms, 32 ch at 64² native 84 ms vs 10 ms (fwd + bwd, batch 8).
_CL_BACKWARD_MIN_PIXELS = 32 * 32


class _GroupNormChannelsLast(torch.autograd.Function):
    """GroupNorm of a channels_last float tensor with a backward written for that layout.

    torch's CPU channels_last GroupNorm backward reduces over H·W inside each group and gets slow when a group
    holds few channels and many pixels (D = C/G = 1..4 at 32²-64²: 5-8x slower than the NCHW kernel). Here the
    (B, H·W, C) view is reduced over H·W with C innermost (vectorised), then folded per group: the same
    formula as torch's kernel (ATen group_norm_kernel.cpp), with
        ds = Σ_hw dy·x, db = Σ_hw dy                               (B, C)
        c1 = (Σ_g db·w · μ − Σ_g ds·w) · σ⁻³ / (D·H·W),  c2 = −c1·μ − Σ_g db·w · σ⁻¹ / (D·H·W)   (B, G)
        dx = w·σ⁻¹·dy + c1·x + c2,  dw = Σ_b (ds − db·μ)·σ⁻¹,  dbias = Σ_b db.
    The forward is torch's own (native_group_norm keeps channels_last).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        b, c, h, w = x.shape
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, b, c, h * w, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        b, c, h, w = x.shape
        d = c // ctx.groups
        x_ = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view: x is channels_last
        dy_ = dy.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view unless autograd handed an NCHW gradient
        ds, db = (dy_ * x_).sum(1), dy_.sum(1)  # (B, C)
        mean_c, rstd_c = mean.repeat_interleave(d, 1), rstd.repeat_interleave(d, 1)  # (B, G) -> (B, C)
        dweight = ((ds - db * mean_c) * rstd_c).sum(0) if ctx.needs_input_grad[1] else None
        dbias = db.sum(0) if ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            ds_g, db_g = (ds * weight).view(b, -1, d).sum(2), (db * weight).view(b, -1, d).sum(2)  # (B, G)
            n = d * h * w
            c1 = (db_g * mean - ds_g) * rstd.pow(3) / n
            c2 = -c1 * mean - db_g * rstd / n
            c1, c2 = (v.repeat_interleave(d, 1)[:, None, :] for v in (c1, c2))  # (B, 1, C)
            dx_ = torch.addcmul(c2, x_, c1).addcmul_(dy_, (weight * rstd_c)[:, None, :])  # (B, H·W, C)
            dx = dx_.view(b, h, w, c).permute(0, 3, 1, 2)  # channels_last, like x
        return dx, dweight, dbias, None, None


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """F.group_norm, with ``_GroupNormChannelsLast`` where autograd records a large channels_last float32 input."""
    if (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype == weight.dtype == torch.float32
        and x.shape[2] * x.shape[3] >= _CL_BACKWARD_MIN_PIXELS
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
        and torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
    ):
        return _GroupNormChannelsLast.apply(x, weight, bias, groups, eps)
    return F.group_norm(x, groups, weight, bias, eps)


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
            return group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)
        if x.dtype == self.weight.dtype:
            return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        if cpu_mixed:
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
