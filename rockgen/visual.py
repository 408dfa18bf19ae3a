"""Writing image grids and strips as PNG (images in [0, 1], (N, 3, H, W))."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images01: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] → (N, H, W, 3) uint8 (rounded, clamped)."""
    x = images01.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid_array(images01: torch.Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """Tile N images row-major into one uint8 array, ``nrow`` images per row, white padding."""
    arr = to_uint8(images01)
    n, h, w, _ = arr.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    out = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = arr[i]
    return out


def upscale_factor(side: int, min_size: int = 96) -> int:
    """The smallest integer factor k ≥ 1 with side·k ≥ ``min_size`` (96 px: the smallest tile a grid shows)."""
    return max(1, -(-int(min_size) // int(side)))


def upscale_to(images01: torch.Tensor, min_size: int = 96) -> torch.Tensor:
    """Nearest-neighbour upscale (N, 3, H, W) by the smallest integer factor that makes H ≥ ``min_size``:
    32-px tiles become visible in a grid, with every pixel kept as a sharp block."""
    factor = upscale_factor(images01.shape[-2], min_size)
    return images01.repeat_interleave(factor, -2).repeat_interleave(factor, -1) if factor > 1 else images01


def save_grid(images01: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save a PNG grid of (N, 3, H, W) images in [0, 1]; creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid_array(images01, nrow)).save(path)
    return path


def save_images(images01: torch.Tensor, folder: str | Path, start: int = 0, prefix: str = "") -> list[Path]:
    """Save each image as ``{prefix}{index:06d}.png``, indices from ``start``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images01)):
        p = folder / f"{prefix}{start + i:06d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths
