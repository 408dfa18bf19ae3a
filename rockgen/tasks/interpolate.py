"""``task=interpolate``: frames between two image files by a DiffAE checkpoint → PNG strip + looping GIF.

    python run.py task=interpolate ckpt_path=logs/train/demo/checkpoints/last.ckpt \\
        image_a=a.png image_b=b.png frames=8 T=50

z_sem is interpolated linearly and the DDIM-inverted x_T spherically (``rockgen.latent_ops.interpolate``).
Writes ``interpolation.png`` (input a | frames | input b, or the frames alone with ``show_inputs=false``) and
``interpolation.gif`` (the frames) into the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image

from rockgen.latent_ops import interpolate, load_image_tensor
from rockgen.lit.checkpoint import CheckpointError, load_checkpoint_module
from rockgen.tasks.vae_tasks import pick_device, upscale_lanczos
from rockgen.visual import save_grid, to_uint8


def load_autoencoder(cfg: DictConfig, task: str):
    """The DiffAE LitModel at ``cfg.ckpt_path`` on ``cfg.device``, in eval mode; errors name ``ckpt_path``."""
    from experiment import LitModel

    if not cfg.ckpt_path:
        raise ValueError(
            f"ckpt_path: task={task} needs a DiffAE checkpoint, e.g. ckpt_path=logs/train/demo/checkpoints/last.ckpt"
        )
    if not Path(cfg.ckpt_path).expanduser().is_file():
        raise FileNotFoundError(f"ckpt_path: checkpoint not found: {cfg.ckpt_path}")
    try:
        return load_checkpoint_module(
            Path(cfg.ckpt_path).expanduser(),
            map_location=pick_device(cfg.device),
            trusted=bool(cfg.get("trusted_checkpoint", False)),
            expect=LitModel,
        )
    except CheckpointError as err:
        raise CheckpointError(f"ckpt_path: {err}") from None


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


def interpolate_task(cfg: DictConfig) -> dict[str, Any]:
    """Render ``frames`` frames from ``image_a`` to ``image_b``; write the strip PNG and the GIF."""
    run_dir = Path(cfg.paths.run_dir)
    model = load_autoencoder(cfg, "interpolate")
    x_a = setting_image(cfg, "image_a", model.image_size)
    x_b = setting_image(cfg, "image_b", model.image_size)
    frames = interpolate(
        model, x_a, x_b, frames=int(cfg.frames), T=cfg.T, batch_size=int(cfg.batch_size), progress=True
    )
    ends = ((x_a + 1) / 2, (x_b + 1) / 2) if cfg.show_inputs else (None, None)
    png = save_strip(frames, run_dir / "interpolation.png", *ends, size=cfg.target_size)
    gif = save_gif(
        upscale_lanczos(frames, cfg.target_size), run_dir / "interpolation.gif", cfg.gif_frame_ms, cfg.gif_pingpong
    )
    print(f"Interpolation strip: {png}\nInterpolation GIF:   {gif}", flush=True)
    return {"run_dir": run_dir, "png": png, "gif": gif, "frames": frames}
