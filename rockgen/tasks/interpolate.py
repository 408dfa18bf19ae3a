"""``task=interpolate``: frames between two image files by a DiffAE checkpoint → PNG strip + looping GIF.

    rockgen task=interpolate ckpt_path=logs/train/demo/checkpoints/last.ckpt \\
        image_a=a.png image_b=b.png frames=8 T=50

z_sem is interpolated linearly and the DDIM-inverted x_T spherically (``rockgen.latent_ops.interpolate``).
Writes ``interpolation.png`` (input a | frames | input b, or the frames alone with ``show_inputs=false``) and
``interpolation.gif`` (the frames) into the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rockgen.latent_ops import interpolate
from rockgen.lit.checkpoint import CheckpointError, load_checkpoint_module
from rockgen.tasks.common import pick_device, save_gif, save_strip, setting_image, upscale_lanczos


def load_autoencoder(cfg: DictConfig, task: str):
    """The DiffAE LitModel at ``cfg.ckpt_path`` on ``cfg.device``, in eval mode; errors name ``ckpt_path``."""
    from rockgen.lit.diffae import LitModel

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
