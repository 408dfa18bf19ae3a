"""``task=mosaic``: one large image from a DiffAE checkpoint by MultiDiffusion (``rockgen.mosaic``).

    python run.py task=mosaic ckpt_path=logs/train/demo-latent/checkpoints/last.ckpt width=1024 height=1024

``width``/``height`` are pixels, or Web-Mercator metres at ``zoom`` with ``units=m`` (pixel size
2π·6378137 / (256·2^zoom) m: 0.0187 m at zoom 23). z_sem is one code for the whole mosaic (``z_sem=shared``:
drawn by the latent DDIM, or encoded from ``z_image``) or a smooth field (``z_sem=field``: codes drawn by the
latent DDIM at anchors every ``anchor_every`` windows, bicubically interpolated to each window). After every
step the canvas state goes to ``<run_dir>/mosaic.partial.pt``: rerun with the same ``run_name`` to resume.
Writes ``<run_dir>/mosaic.png`` and ``mosaic.json``; ``output=geotiff|xyz|[geotiff,xyz]`` adds ``mosaic.tif`` /
the ``xyz/`` pyramid with its viewer (``rockgen.tasks.gis_output``). ``sampler=``/``spacing=`` pick the image
solver (the partial state of a multistep solver holds its history too, so it resumes exactly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image

from rockgen.lit.checkpoint import load_checkpoint_module
from rockgen.mosaic import MosaicModel, diffae_mosaic, window_codes, window_origins
from rockgen.samplers import solver_options
from rockgen.tasks.gis_output import GisOutputs, pixel_size_m
from rockgen.visual import to_uint8


def mosaic_size(cfg: DictConfig) -> tuple[int, int]:
    """(height, width) in pixels from ``width``/``height`` and ``units`` (px | m at ``zoom``)."""
    if cfg.width is None or cfg.height is None:
        raise ValueError("task=mosaic needs width=... and height=... (pixels, or metres with units=m zoom=...)")
    if cfg.units == "px":
        return int(cfg.height), int(cfg.width)
    if cfg.units == "m":
        px = pixel_size_m(cfg.zoom)
        return max(1, round(float(cfg.height) / px)), max(1, round(float(cfg.width) / px))
    raise ValueError(f"units must be px or m, got {cfg.units!r}")


def _z_tile(model, cfg: DictConfig) -> torch.Tensor | None:
    """The tile (1, 3, S, S) whose code z_sem=shared uses (``z_image``), or None to sample one."""
    if cfg.z_sem == "shared" and cfg.z_image:
        from rockgen.latent_ops import load_image_tensor

        return load_image_tensor(cfg.z_image, model.image_size)
    return None


def _codes(model, cfg: DictConfig, mosaic: MosaicModel, gen: torch.Generator) -> torch.Tensor:
    """z_sem per window (N, D) for z_sem=shared|field."""
    return window_codes(model, mosaic, cfg.z_sem, gen, z_tile=_z_tile(model, cfg), T_latent=cfg.T_latent,
                        anchor_every=int(cfg.anchor_every), source=str(cfg.ckpt_path))  # fmt: skip


def mosaic_task(cfg: DictConfig) -> dict[str, Any]:
    """Sample the mosaic and write ``mosaic.png`` (+ ``mosaic.json``) under the run directory."""
    if not cfg.ckpt_path:
        raise ValueError("task=mosaic needs ckpt_path=<DiffAE checkpoint>")
    height, width = mosaic_size(cfg)
    run_dir = Path(cfg.paths.run_dir)
    gis = GisOutputs.plan(cfg, run_dir, "mosaic", height, width)  # bad zoom / tile / existing files: before work
    out = gis.paths()["png"]
    sampler, spacing = str(cfg.get("sampler") or "ddim"), cfg.get("spacing")
    solver_options(sampler, spacing)  # a bad sampler or spacing fails before the checkpoint is read
    if cfg.window is not None:  # settings errors before the checkpoint is read
        window_origins(height, int(cfg.window), int(cfg.overlap if cfg.overlap is not None else cfg.window // 4))
        window_origins(width, int(cfg.window), int(cfg.overlap if cfg.overlap is not None else cfg.window // 4))
    model = load_checkpoint_module(cfg.ckpt_path).eval()
    if not hasattr(model, "decoder_fn"):
        raise ValueError(f"task=mosaic needs a DiffAE checkpoint; {cfg.ckpt_path} holds a {type(model).__name__}")
    window = int(cfg.window or model.image_size)
    overlap = int(cfg.overlap if cfg.overlap is not None else window // 4)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(
        ckpt=str(cfg.ckpt_path), height=height, width=width, window=window, overlap=overlap, T=int(cfg.T),
        seed=int(cfg.seed), z_sem=str(cfg.z_sem), z_image=str(cfg.z_image), sampler=sampler, spacing=spacing,
    )  # fmt: skip
    x0, mosaic = diffae_mosaic(
        model, height, width, int(cfg.T), seed=int(cfg.seed), z_sem=cfg.z_sem, z_tile=_z_tile(model, cfg),
        T_latent=cfg.T_latent, anchor_every=int(cfg.anchor_every), window=window, overlap=overlap,
        window_batch=int(cfg.window_batch), sampler=sampler, spacing=spacing,
        state_path=run_dir / "mosaic.partial.pt", meta=meta,
        source=str(cfg.ckpt_path),
    )  # fmt: skip
    img = to_uint8(((x0.float() + 1) / 2).clamp(0, 1))[0]
    Image.fromarray(img).save(out)
    info = {**meta, "windows": len(mosaic.origins), "grid": list(mosaic.grid), "file": str(out)}
    info.update(gis.write_gis(img))
    (run_dir / "mosaic.partial.pt").unlink(missing_ok=True)
    (run_dir / "mosaic.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"Wrote a {width}x{height} mosaic ({len(mosaic.origins)} windows) to {out}", flush=True)
    return {"run_dir": run_dir, "mosaic": out, "image": img}
