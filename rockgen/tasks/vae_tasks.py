"""Tasks of the VAE baseline: extract latents (and fit their Gaussian), reconstruct tiles, interpolate.

    rockgen template=demo_vae                                  # train (the ordinary train task)
    rockgen task=vae_latents template=demo_vae                 # latents.npy, latent_gaussian.npz,
                                                                     #   vae_gaussian.ckpt (Gaussian inside)
    rockgen task=vae_reconstruct template=demo_vae target_size=128
    rockgen task=vae_interpolate template=demo_vae image_a=a.png image_b=b.png frames=8

``ckpt_path`` defaults to ``logs/train/<template>/checkpoints/last.ckpt``. Generation (``model.sample``) is
the shared ``task=generate``; ``upscale_lanczos`` is the ``target_size`` resize these tasks use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from rockgen.latents import Latents, encoder_fingerprint, latent_stats, save_latents
from rockgen.lit.checkpoint import CheckpointError, load_checkpoint_module, read_checkpoint
from rockgen.lit.vae import LitVAE
from rockgen.tasks import write_json
from rockgen.tasks.common import pick_device, save_gif, save_strip, setting_image, tile_paths, tiles_of, upscale_lanczos
from rockgen.visual import save_grid, save_images

log = logging.getLogger(__name__)


def load_vae(cfg: DictConfig, device: torch.device) -> LitVAE:
    """The LitVAE at ``cfg.ckpt_path`` on ``device``, in eval mode; errors name ``ckpt_path``."""
    if not cfg.ckpt_path:
        raise ValueError("ckpt_path: give the checkpoint of a trained VAE (task=train template=demo_vae)")
    try:
        return load_checkpoint_module(
            Path(cfg.ckpt_path).expanduser(),
            map_location=device,
            expect=LitVAE,
            trusted=bool(cfg.get("trusted_checkpoint", False)),
        )
    except CheckpointError as err:
        raise CheckpointError(f"ckpt_path: {err}") from None


@torch.no_grad()
def encode_tiles(model: LitVAE, dataset: Dataset, batch_size: int, num_workers: int = 0) -> np.ndarray:
    """Posterior means μ (N, latent_dim) float32 of every item of the dataset, in order."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return np.concatenate([model.encode(b["img"].to(model.device))[0].cpu().numpy() for b in loader])


def extract_latents(cfg: DictConfig) -> dict[str, Any]:
    """Encode a split (``latents.pt`` + ``.npy`` as task=infer_latents writes them), fit the Gaussian of the
    latents and write a checkpoint that holds it."""
    run_dir = Path(cfg.paths.run_dir)
    model = load_vae(cfg, pick_device(cfg.device))
    dm, dataset = tiles_of(cfg.data, model.image_size, cfg.split)
    latents = encode_tiles(model, dataset, cfg.batch_size, cfg.data.num_workers)
    z = torch.from_numpy(latents)
    paths, label_of = tile_paths(dataset), dict(zip(dm.files, dm.labels(), strict=True))
    mean, std = latent_stats(z)
    save_latents(
        run_dir / "latents.pt",
        Latents(
            z=z,
            paths=paths,
            labels=[label_of[p] for p in paths],
            mean=mean,
            std=std,
            fingerprint=encoder_fingerprint(model.net),
            checkpoint=str(cfg.ckpt_path),
            image_size=model.image_size,
            global_step=model.loaded_from["global_step"],
        ),
    )
    stats = model.fit_latent_gaussian(latents)
    np.savez(run_dir / "latent_gaussian.npz", **stats)
    ckpt = read_checkpoint(cfg.ckpt_path, "cpu")
    ckpt["state_dict"].update({k: v.cpu() for k, v in model.state_dict().items() if k.startswith("latent_")})
    torch.save(ckpt, run_dir / "vae_gaussian.ckpt")
    result = {
        "checkpoint": str(cfg.ckpt_path),
        "split": cfg.split,
        "num_latents": int(latents.shape[0]),
        "latent_dim": int(latents.shape[1]),
        "latent_mean_norm": float(np.linalg.norm(stats["mean"])),
        "latent_cov_trace": float(np.trace(stats["cov"])),
        "gaussian_checkpoint": str(run_dir / "vae_gaussian.ckpt"),
    }
    write_json(run_dir / "vae_latents.json", result)
    log.info("%d latents of %s → %s", latents.shape[0], cfg.split, run_dir)
    return result


@torch.no_grad()
def reconstruct(cfg: DictConfig) -> dict[str, Any]:
    """Reconstruct held-out tiles: PSNR/SSIM(/LPIPS), a grid (originals | reconstructions) and PNGs."""
    from rockgen.metrics import ReconstructionMetrics

    run_dir = Path(cfg.paths.run_dir)
    model = load_vae(cfg, pick_device(cfg.device))
    loader = DataLoader(tiles_of(cfg.data, model.image_size, cfg.split)[1], batch_size=cfg.batch_size)
    metrics = ReconstructionMetrics().to(model.device)
    grid, start = None, 0
    for batch in loader:
        x = batch["img"].to(model.device)
        rec, target = model.reconstruct(x), (x + 1) / 2
        metrics.update(rec, target)
        if grid is None:
            grid = torch.cat([target[:8], rec[:8]]).cpu()
        save_images(upscale_lanczos(rec.cpu(), cfg.target_size), run_dir / "reconstructions", start)
        start += x.shape[0]
    save_grid(grid, run_dir / "reconstructions.png", nrow=grid.shape[0] // 2)
    result = {"checkpoint": str(cfg.ckpt_path), "split": cfg.split, "images": start, **metrics.compute()}
    write_json(run_dir / "reconstruction.json", result)
    return result


@torch.no_grad()
def interpolate(cfg: DictConfig) -> dict[str, Any]:
    """Decode the straight line between the codes of ``image_a`` and ``image_b``: strip PNG + looping GIF."""
    run_dir = Path(cfg.paths.run_dir)
    model = load_vae(cfg, pick_device(cfg.device))
    x_a, x_b = (setting_image(cfg, key, model.image_size).to(model.device) for key in ("image_a", "image_b"))
    frames = upscale_lanczos(model.interpolate(x_a, x_b, int(cfg.frames))[0].cpu(), cfg.target_size)
    ends = [upscale_lanczos((x.cpu() + 1) / 2, cfg.target_size) for x in (x_a, x_b)]
    png = save_strip(frames, run_dir / "interpolation.png", *(ends if cfg.show_inputs else (None, None)))
    gif = save_gif(frames, run_dir / "interpolation.gif", cfg.gif_frame_ms, cfg.gif_pingpong)
    print(f"Interpolation strip: {png}\nInterpolation GIF:   {gif}", flush=True)
    return {"run_dir": run_dir, "png": png, "gif": gif, "frames": frames}
