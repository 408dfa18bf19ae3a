"""UNet building blocks of DiffAE: ResBlock with two-condition AdaGN, QKV self-attention, resamplers.

Module and parameter names follow the official code (phizaz/diffae `model/blocks.py`) one to one
(`in_layers.{0,2}`, `emb_layers.1`, `cond_emb_layers.1`, `out_layers.{0,3}`, `skip_connection`, `norm`,
`qkv`, `proj_out`), so official state dicts load without renaming inside a block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rockgen.models.nn import GroupNorm32, as_tuple, check_ladder, to_config, zero_module


def _upsample(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour ×2: (B, C, H, W) -> (B, C, 2H, 2W)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """2×2 average pool: (B, C, H, W) -> (B, C, H/2, W/2)."""
    return F.avg_pool2d(x, kernel_size=2, stride=2)


def _phase_taps(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest ×2 then 3 taps along ``dim`` = per output phase 2 taps at the low resolution.

    Even outputs 2i see the upsampled rows (2i-1, 2i, 2i+1) = low-res rows (i-1, i, i): taps (w0 | w1 + w2);
    odd outputs see (i, i, i+1): taps (w0 + w1 | w2).
    """
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def upsample_conv3x3(h: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(nearest×2(h)) for a 3×3, stride-1, padding-1 conv, computed at h's resolution (sub-pixel form).

    h (B, C_in, H, W) -> (B, C_out, 2H, 2W). Each of the 4 output phases is a 2×2 conv of h with summed taps
    (16 instead of 36 multiply-adds per output pixel and no 4×-size upsampled input to build or keep for
    backward); equal to the direct form up to float rounding of the tap sums.
    """
    b, _, height, width = h.shape
    # Tap sums in the weight's dtype with plain adds (no matmul, so autocast cannot round them to bf16).
    weight = [_phase_taps(rows, 3) for rows in _phase_taps(conv.weight, 2)]  # [phase_y][phase_x] (O, I, 2, 2)
    padded = F.pad(h, (1, 1, 1, 1))

    def phase(a: int, c: int) -> torch.Tensor:  # output pixels (2i + a, 2j + c): (B, C_out, H, W)
        return F.conv2d(padded[:, :, a : a + height + 1, c : c + width + 1], weight[a][c], conv.bias)

    # Interleave the phases with two stacks in the memory order of h, so channels_last stays channels_last.
    if h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous():
        rows = [torch.stack([phase(a, c).permute(0, 2, 3, 1) for c in (0, 1)], dim=3) for a in (0, 1)]
        return torch.stack(rows, dim=2).reshape(b, 2 * height, 2 * width, -1).permute(0, 3, 1, 2)
    rows = [torch.stack([phase(a, c) for c in (0, 1)], dim=-1) for a in (0, 1)]  # (B, C, H, W, 2)
    return torch.stack(rows, dim=3).reshape(b, -1, 2 * height, 2 * width)  # (B, C, H, 2, W, 2) -> 2H, 2W


def _recompute_in_backward(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """fn(*args); under autograd keep only args and recompute fn in backward.

    Used for the memory-bound GroupNorm → (AdaGN) → SiLU chains: saving their intermediate outputs would cost
    2–3 full-size activations per ResBlock (about half of the training activation memory), recomputing them
    costs a few percent of a training step. The results are bit-identical (the chains hold no randomness).
    """
    if torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
    return fn(*args)


def _add_residual(skip: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """skip + branch, written into branch (a fresh output whose backward does not need it) when that gives
    the same result: same shape and memory layout, and no dtype promotion (bf16 branch + float32 skip)."""
    same_layout = branch.shape == skip.shape and branch.stride() == skip.stride()
    if same_layout and branch.dtype == torch.promote_types(branch.dtype, skip.dtype):
        return branch.add_(skip)
    return skip + branch


class ResBlock(nn.Module):
    """Residual block: AdaGN on time (+ z_sem) when conditioned, else the official single-conv encoder block.

    Conditioned (emb_channels set), official `ResBlock(two_cond=True)`:
        h = conv3x3(SiLU(GN(x)))                                   # in_layers, (B, C_out, H, W)
        (t_s, t_b) = Linear(SiLU(t_emb)).chunk(2)                  # emb_layers, (B, C_out, 1, 1) each
        z_s = Linear(SiLU(z_sem))                                  # cond_emb_layers (only if cond_channels)
        h = (1 + z_s) * ((1 + t_s) * GN(h) + t_b)                  # AdaGN(h, t, z), paper eq. (7)
        out = skip(x) + conv3x3_zero_init(Dropout(SiLU(h)))        # out_layers
    Unconditioned (emb_channels=None): the official encoder quirk -- `out_layers` only exist with a condition,
    so the block is out = skip(x) + conv3x3(SiLU(GN(x))) with one conv and (by default) no dropout.
    up/down resample after GN+SiLU, before the first conv, and the skip input too (BigGAN-style up/down).

    The Sequentials only fix the official parameter names; forward calls their parts itself so that, under
    autograd, GN → (AdaGN) → SiLU is recomputed in backward instead of stored, dropout keeps a bool mask, up
    blocks use the sub-pixel ``upsample_conv3x3`` and the residual is added in place (see ``_add_residual``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        emb_channels: int | None = 512,
        cond_channels: int | None = None,
        dropout: float = 0.0,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        if up and down:
            raise ValueError("ResBlock: up and down are mutually exclusive")
        if emb_channels is None and cond_channels is not None:
            raise ValueError("ResBlock: cond_channels needs emb_channels (z_sem modulates the time-conditioned path)")
        self.up, self.down = up, down
        self.dropout = dropout
        self.in_layers = nn.Sequential(
            GroupNorm32(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = self.cond_emb_layers = self.out_layers = None
        if emb_channels is not None:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            if cond_channels is not None:
                self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_channels, out_channels))
            self.out_layers = nn.Sequential(
                GroupNorm32(out_channels),
                nn.SiLU(),
                nn.Dropout(dropout),
                # Zero init: each residual branch starts as the identity (DiffAE found it helps training).
                zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
            )
        self.skip_connection = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _norm_act(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU(GN(x)), average-pooled in a down block: the input of the first conv."""
        h = F.silu(self.in_layers[0](x), inplace=not torch.is_grad_enabled())
        return _downsample(h) if self.down else h

    def _conv_in(self, h: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        """The first conv of h = SiLU(GN(x)), at the output resolution (up blocks upsample h first)."""
        conv = self.in_layers[2]
        if dropout > 0:
            return conv(F.dropout(_upsample(h) if self.up else h, dropout, self.training))
        return upsample_conv3x3(h, conv) if self.up else conv(h)

    def _adagn_act(self, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """SiLU(scale · GN(h) + shift) with (B, C, 1, 1) scale and shift."""
        return F.silu(torch.addcmul(shift, self.out_layers[0](h), scale), inplace=not torch.is_grad_enabled())

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout == 0:
            return h
        # native_dropout draws the same mask as F.dropout but keeps a 1-byte bool mask for backward where
        # F.dropout on CPU keeps a float32 copy of the scaled mask.
        return torch.native_dropout(h, self.dropout, True)[0]

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C_in, H, W), emb (B, emb_channels), cond (B, cond_channels) -> (B, C_out, H', W')."""
        h = _recompute_in_backward(self._norm_act, x)
        if self.up:
            x = _upsample(x)
        elif self.down:
            x = _downsample(x)
        if self.out_layers is None:
            # Dropout is not in the official encoder; 0.0 (the default) reproduces it.
            return _add_residual(self.skip_connection(x), self._conv_in(h, self.dropout))

        h = self._conv_in(h)
        if emb is None:
            raise ValueError("ResBlock: this block is time-conditioned and needs emb")
        # (B, 2C) -> (B, 2C, 1, 1): broadcasting over H, W keeps channels_last tensors channels_last.
        t_scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        scale = 1 + t_scale
        if self.cond_emb_layers is not None:
            if cond is None:
                raise ValueError("ResBlock: this block is z_sem-conditioned and needs cond")
            z_scale = 1 + self.cond_emb_layers(cond)[:, :, None, None]
            # Fold (1+z_s) into the (B, C, 1, 1) affine: one full-size multiply-add instead of three.
            scale = scale * z_scale
            shift = shift * z_scale
        h = self._dropout(_recompute_in_backward(self._adagn_act, h, scale, shift))
        return _add_residual(self.skip_connection(x), self.out_layers[3](h))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over H·W positions with a residual; official AttentionBlock via SDPA.

    x (B, C, H, W) -> GN -> qkv 1x1 (C -> 3C) -> softmax(q·kᵀ/√d)·v per head -> zero-init 1x1 proj -> + x.
    The qkv channels use the official *legacy* layout [head][q|k|v][d] (QKVAttentionLegacy), so official
    weights load unchanged for any head count; √d scaling equals the legacy q·d^-1/4, k·d^-1/4.
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"AttentionBlock: num_heads={num_heads} must divide channels={channels}")
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        # Conv1d parameters (3C, C, 1) as in the official checkpoints; applied below as a linear map.
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        b, c, height, width = x.shape
        length, d = height * width, c // self.num_heads
        # (B, C, H, W) -> (B, L, C): a free view when x is channels_last, so qkv is one plain GEMM.
        h = self.norm(x).flatten(2).transpose(1, 2)
        qkv = F.linear(h, self.qkv.weight[..., 0], self.qkv.bias)  # (B, L, 3C)
        q, k, v = qkv.view(b, length, self.num_heads, 3, d).permute(3, 0, 2, 1, 4).unbind(0)  # (B, nh, L, d)
        a = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(d); (B, nh, L, d)
        a = a.transpose(1, 2).reshape(b, length, c)  # heads back to channels [head][d]
        out = F.linear(a, self.proj_out.weight[..., 0], self.proj_out.bias)  # (B, L, C)
        # (B, L, C) -> (B, C, H, W) as a channels_last view, no copy; the residual is added in place there.
        out = out.transpose(1, 2).view(b, c, height, width)
        return _add_residual(x, out)


class Downsample(nn.Module):
    """Strided conv3x3 ÷2 (only used with resblock_updown=False, official conv_resample=True)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H/2, W/2)."""
        return self.op(x)


class Upsample(nn.Module):
    """Nearest ×2 then conv3x3 (only used with resblock_updown=False, official conv_resample=True)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, 2H, 2W)."""
        return upsample_conv3x3(x, self.conv)


class CondSequential(nn.Sequential):
    """nn.Sequential that passes (emb, cond) to its ResBlocks only (official TimestepEmbedSequential)."""

    def forward(
        self, h: torch.Tensor, emb: torch.Tensor | None = None, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        for layer in self:
            h = layer(h, emb, cond) if isinstance(layer, ResBlock) else layer(h)
        return h


def run_block(
    block: CondSequential,
    h: torch.Tensor,
    emb: torch.Tensor | None,
    cond: torch.Tensor | None,
    use_checkpoint: bool,
) -> torch.Tensor:
    """Apply block; with use_checkpoint recompute its activations in backward (~30% compute for memory)."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, h, emb, cond, use_reentrant=False)
    return block(h, emb, cond)


def build_down_path(
    make_block: Callable[..., ResBlock],
    in_channels: int,
    image_size: int,
    model_channels: int,
    channel_mult: Sequence[int],
    num_res_blocks: int,
    attention_resolutions: Sequence[int],
    num_heads: int,
    resblock_updown: bool,
) -> tuple[nn.ModuleList, list[int], int]:
    """Build conv-in + the per-level ResBlocks (+attn) and down blocks shared by the UNet and the encoder.

    Returns (input_blocks, channels of every block output in order -- the U-Net laterals, final width).
    Official layout (`unet.py:98-190`): level l has num_res_blocks ResBlocks to width model_channels·mult[l]
    (+ attention when the current resolution is listed), then one down block unless it is the last level.
    """
    ch = model_channels * channel_mult[0]
    blocks = nn.ModuleList([CondSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    widths = [ch]
    resolution = image_size
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers: list[nn.Module] = [make_block(ch, model_channels * mult)]
            ch = model_channels * mult
            if resolution in attention_resolutions:
                layers.append(AttentionBlock(ch, num_heads))
            blocks.append(CondSequential(*layers))
            widths.append(ch)
        if level != len(channel_mult) - 1:
            blocks.append(CondSequential(make_block(ch, ch, down=True) if resblock_updown else Downsample(ch)))
            widths.append(ch)
            resolution //= 2
    return blocks, widths, ch


LADDER_FIELDS = ("in_channels", "image_size", "model_channels", "channel_mult", "num_res_blocks")
LADDER_FIELDS += ("attention_resolutions", "num_heads", "resblock_updown")


def down_path_of(cfg, make_block: Callable[..., ResBlock]) -> tuple[nn.ModuleList, list[int], int]:
    """``build_down_path`` with the ladder of a checked network config (UNetConfig/EncoderConfig field names)."""
    return build_down_path(make_block, *(getattr(cfg, name) for name in LADDER_FIELDS))


def checked_ladder_config(cfg, cls: type, positive: Sequence[str]):
    """``cfg`` (a ``cls`` or a mapping) as a ``cls`` with plain tuples, once its ladder (``check_ladder``), the
    fields named in ``positive`` (>= 1) and its dropout (in [0, 1)) are valid; errors name ``cls.field``."""
    name = cls.__name__
    cfg = to_config(cfg, cls)
    mult, attn = as_tuple(cfg.channel_mult), as_tuple(cfg.attention_resolutions)
    check_ladder(name, cfg.image_size, cfg.model_channels, mult, attn, cfg.num_res_blocks, cfg.num_heads)
    small = [field for field in positive if getattr(cfg, field) < 1]
    if small:
        raise ValueError(f"{name}.{small[0]} must be >= 1, got {getattr(cfg, small[0])}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"{name}.dropout must be in [0, 1), got {cfg.dropout}")
    return replace(cfg, channel_mult=mult, attention_resolutions=attn)


def build_middle_block(make_block: Callable[..., ResBlock], channels: int, num_heads: int) -> CondSequential:
    """ResBlock -> attention -> ResBlock at the lowest resolution (official `middle_block`)."""
    return CondSequential(
        make_block(channels, channels), AttentionBlock(channels, num_heads), make_block(channels, channels)
    )
