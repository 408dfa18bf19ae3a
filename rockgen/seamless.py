"""Seamless (periodic) tiles at sampling time: circular padding in a network's convolutions, no retraining.

With every spatial padding made circular, the decoder sees the tile as a torus: each layer commutes with
a cyclic roll of its input (by multiples of the total down-sampling factor; nearest up-sampling, 2×2 average
pooling, attention and GroupNorm already do), so the ε̂ / x̂_0 field and therefore every sampler step is
periodic, and a tile laid next to a copy of itself shows no seam::

    with seamless_padding(model.ema_model.decoder):
        x0 = ddim_sample(model.decoder_fn(z), x_T, model.schedule, 20)

The switch is undone on exit (also on error), so training and reconstruction keep zero padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from rockgen.models import blocks


def _upsample_conv3x3_circular(h: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv3x3(nearest×2(h)) with circular padding: (B, C, H, W) → (B, C_out, 2H, 2W).

    Stands in for the fused sub-pixel ``blocks.upsample_conv3x3``, whose zero padding is built in.
    """
    up = F.interpolate(h, scale_factor=2.0, mode="nearest")
    return F.conv2d(F.pad(up, (1, 1, 1, 1), mode="circular"), conv.weight, conv.bias)


@contextmanager
def seamless_padding(module: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, every padded Conv2d of ``module`` pads circularly (and the fused up-sampling too)."""
    if not enabled:
        yield module
        return
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and any(p > 0 for p in _pads(m))]
    saved = [m.padding_mode for m in convs]
    fused = blocks.upsample_conv3x3
    try:
        for m in convs:
            m.padding_mode = "circular"  # Conv2d._conv_forward then pads with F.pad(mode="circular")
        blocks.upsample_conv3x3 = _upsample_conv3x3_circular
        yield module
    finally:
        for m, mode in zip(convs, saved, strict=True):
            m.padding_mode = mode
        blocks.upsample_conv3x3 = fused


def _pads(conv: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):  # "same"/"valid": torch keeps the amounts it derived
        return tuple(conv._reversed_padding_repeated_twice)
    return tuple(conv.padding)


def seam_statistics(img: torch.Tensor) -> dict[str, float]:
    """Mean |Δ| across the wrap seams vs. across interior pixel boundaries of tiles (B, C, H, W).

    Horizontal: |x[..., 0] − x[..., W−1]| vs. |x[..., j+1] − x[..., j]|; vertical likewise. A periodic tile
    has wrap-seam gradients distributed like the interior's; a zero-padded one has a visible seam.
    """
    dx = (img[..., 1:] - img[..., :-1]).abs()
    dy = (img[..., 1:, :] - img[..., :-1, :]).abs()
    return {
        "interior_x": float(dx.mean()),
        "seam_x": float((img[..., 0] - img[..., -1]).abs().mean()),
        "interior_y": float(dy.mean()),
        "seam_y": float((img[..., 0, :] - img[..., -1, :]).abs().mean()),
    }
