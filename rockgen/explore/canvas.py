"""Inputs of the explorer's Inpaint and Mosaic tabs: a whole image at native resolution and built-in masks.

Inpainting works at the image's own resolution (a tile, or a larger picture as a MultiDiffusion canvas), so,
unlike the other tabs, the image is not cut to one tile; the mask is an uploaded image of the same size or a
preset drawn here:

    image = load_canvas(path, tile=32, max_pixels=65536)          # (1, 3, H, W) in [-1, 1]
    mask = preset_mask("random holes", 48, 64, size=0.4, seed=0)  # (1, 1, H, W) bool, True = fill
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from rockgen.data.images import ImageReadError, load_rgb

MASK_PRESETS = ("centre square", "left strip", "random holes")


def load_canvas(path: str | Path | None, tile: int, max_pixels: int, what: str = "image") -> torch.Tensor:
    """An image file at native resolution as (1, 3, H, W) in [-1, 1]; at least one tile, at most ``max_pixels``."""
    if not path:
        raise ValueError(f"{what}: upload an image or pick a tile first")
    name = Path(str(path)).name
    try:
        arr = load_rgb(path)
    except (ImageReadError, FileNotFoundError) as err:
        raise ValueError(f"{what}: not a readable image ({name}): {err}") from None
    h, w = arr.shape[:2]
    if h < tile or w < tile:
        raise ValueError(
            f"{what} {name} is {w}×{h} px, smaller than the model's {tile}×{tile} tile: inpainting works at "
            f"native resolution, so give an image of at least {tile}×{tile} px"
        )
    if h * w > max_pixels:
        raise ValueError(f"{what} {name} is {w}×{h} = {w * h} px, more than max_mosaic_pixels={max_pixels}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


def preset_mask(kind: str, height: int, width: int, size: float, seed: int = 0) -> torch.Tensor:
    """(1, 1, H, W) bool (True = fill): a centred square of side ``size``·min(H, W), a left strip ``size``·W
    wide, or random square holes (side min(H, W)/8, positions from ``seed``) covering about ``size``/2 of it.
    """
    if kind not in MASK_PRESETS:
        raise ValueError(f"mask preset: one of {list(MASK_PRESETS)}, got {kind!r}")
    if not 0 < float(size) < 1:
        raise ValueError(f"mask size: a fraction in (0, 1), got {size}")
    mask = torch.zeros(height, width, dtype=torch.bool)
    if kind == "centre square":
        side = max(1, round(size * min(height, width)))
        top, left = (height - side) // 2, (width - side) // 2
        mask[top : top + side, left : left + side] = True
    elif kind == "left strip":
        mask[:, : max(1, round(size * width))] = True
    else:
        side = max(2, min(height, width) // 8)
        gen = torch.Generator().manual_seed(int(seed))
        target = size / 2 * height * width
        for _ in range(10 * math.ceil(target / side**2) + 10):  # bounded: overlapping holes add less
            if mask.sum() >= target:
                break
            top = int(torch.randint(0, height - side + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - side + 1, (1,), generator=gen))
            mask[top : top + side, left : left + side] = True
    return mask[None, None]
