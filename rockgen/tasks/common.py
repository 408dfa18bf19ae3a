"""Helpers shared by the tasks: device choice, deterministic tile sets, setting-named image inputs, strips, GIFs.

The lowest module of ``rockgen.tasks`` (it imports no task), so that tasks can share these without import circles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import Dataset, Subset

from rockgen.data import TileDataset
from rockgen.latent_ops import load_image_tensor
from rockgen.visual import save_grid, to_uint8

SPLITS = ("train", "val", "all")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` = the first CUDA device if there is one, else the CPU; anything else as torch spells it."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)


def tiles_of(data: DictConfig | dict[str, Any], image_size: int, split: str) -> tuple[Any, Dataset]:
    """(data module, deterministic tiles (no augmentation)) of the data config at ``image_size``.

    ``train``: every grid tile of the training files; ``val``: the held-out tiles validation uses (capped by
    ``data.val_max_items``); ``all``: the predict set (every file, grid tiles or one centre crop each).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    dm = hydra.utils.instantiate(data, image_size=image_size, _convert_="all")
    dm.prepare_data()
    dm.setup("predict" if split == "all" else "fit")
    if split == "all":
        return dm, dm.predict_set
    if split == "train":
        return dm, TileDataset(dm.train_files, image_size, mode="grid")
    if dm.val_set is None:
        raise ValueError(f"no held-out files in {dm.data_root} (data.val_fraction={dm.val_fraction})")
    return dm, dm.val_set


def tile_paths(dataset: Dataset) -> list[str]:
    """Source file of every item of a TileDataset or a Subset of one."""
    indices = dataset.indices if isinstance(dataset, Subset) else range(len(dataset))
    tiles = dataset.dataset if isinstance(dataset, Subset) else dataset
    return [tiles.files[tiles.item_source(int(i))] for i in indices]


def upscale_lanczos(images01: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize (N, 3, H, W) in [0, 1] to (N, 3, size, size) with Lanczos (PIL, on uint8); None = unchanged."""
    if not size or size == images01.shape[-1]:
        return images01
    out = [np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.LANCZOS)) for a in to_uint8(images01)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def setting_image(cfg: DictConfig, key: str, image_size: int) -> torch.Tensor:
    """The image file named by setting ``key`` as (1, 3, S, S) in [-1, 1]; errors name the setting."""
    path = cfg.get(key)
    if not path:
        raise ValueError(f"{key}: give an image file ({key}=path/to/tile.png)")
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"{key}: image not found: {path}")
    return load_image_tensor(path, image_size, fit=cfg.fit)


def save_gif(images01: torch.Tensor, path: str | Path, frame_ms: int = 150, pingpong: bool = True) -> Path:
    """Looping GIF of (N, 3, H, W) in [0, 1]; ``pingpong`` plays forward then back, so the loop has no jump.

    Each frame gets its own 256-colour median-cut palette without dithering (Pillow's default web palette
    would band the subtle colours of rock).
    """
    arrays = list(to_uint8(images01))
    if pingpong and len(arrays) > 2:
        arrays += arrays[-2:0:-1]
    frames = [
        Image.fromarray(a).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) for a in arrays
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(frame_ms), loop=0)
    return path


def save_strip(
    images01: torch.Tensor,
    path: Path,
    first: torch.Tensor | None = None,
    last: torch.Tensor | None = None,
    size: int | None = None,
) -> Path:
    """One-row PNG of (N, 3, S, S) in [0, 1], framed by images ``first``/``last`` (1, 3, S, S) if given;
    ``size``: each tile upscaled to size×size with Lanczos (for viewing small tiles)."""
    row = torch.cat([t.cpu() for t in (first, images01, last) if t is not None])
    return save_grid(upscale_lanczos(row, size), path, nrow=row.shape[0])
