"""Validation of an autoencoder: reconstructions of held-out tiles with inferred and with random x_T.

For each T in ``evaluation.T``: *inferred* x_T = DDIM-inversion of x0 (how well x_T + z_sem reproduce the tile)
and *random* x_T ~ N(0, I) (what z_sem alone keeps). PSNR/SSIM (and LPIPS where its backbone weights exist)
via torchmetrics, synchronised across DDP ranks; rank 0 writes a PNG grid (originals | reconstructions) of
``grid_images`` tiles spread over all validation batches, upscaled to ≥ 96 px.
With ``evaluation.kid=true``: FID and KID (± std) of the random-x_T renders at the largest T (the inferred ones
if random x_T is off) against the held-out tiles, when the Inception weights are on disk (a warning otherwise).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from rockgen.config import EvalConf
from rockgen.lit.common import step_image_path
from rockgen.samplers import ddim_invert, ddim_sample
from rockgen.visual import save_grid, upscale_to


class ReconstructionEvaluator:
    """Accumulates reconstruction metrics per (x_T kind, T); kept out of the module's state dict."""

    def __init__(self, conf: EvalConf) -> None:
        self.conf = conf
        self.modes = [m for m, on in (("inferred", conf.inferred_xT), ("random", conf.random_xT)) if on]
        self.metrics: dict[str, torch.nn.Module] | None = None
        self.distribution: dict[str, torch.nn.Module] | None = None  # FID/KID, built on first use
        self._grid: list[torch.Tensor] | None = None

    def start(self, module: pl.LightningModule) -> None:
        if self.metrics is None:
            from rockgen.metrics import ReconstructionMetrics

            self.metrics = {
                f"{m}_T{T}": ReconstructionMetrics(lpips=None if self.conf.lpips else False)
                for m in self.modes
                for T in self.conf.T
            }
        if self.conf.kid and self.distribution is None:
            self.distribution = _distribution_metrics(self.conf.kid_subset_size) or {}  # {}: warned once
        scores = [v for k, v in (self.distribution or {}).items() if k != "feature"]
        for metric in [*self.metrics.values(), *scores]:
            metric.to(module.device)
            metric.reset()
        if self.distribution:
            self.distribution["feature"].to(module.device)
        self._seen = 0
        self._grid = None

    @torch.no_grad()
    def update(self, module, x: torch.Tensor, cond: torch.Tensor, batch_idx: int) -> None:
        """Reconstruct a batch x (B, 3, H, W) in [-1, 1] with z_sem ``cond`` (B, D) at every T."""
        fn = module.decoder_fn(cond)
        d = module.diffusion_conf
        kw = dict(clip_x0=d.clip_x0, prediction=d.prediction)
        gen = torch.Generator(device=x.device).manual_seed(self.conf.seed + batch_idx)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        target = ((x.float() + 1) / 2).clamp(0, 1)
        rows: dict[str, torch.Tensor] = {}
        for T in self.conf.T:
            for mode in self.modes:
                x_T = ddim_invert(fn, x, module.schedule, T, **kw) if mode == "inferred" else noise
                rec = ((ddim_sample(fn, x_T, module.schedule, T, **kw).float() + 1) / 2).clamp(0, 1)
                self.metrics[f"{mode}_T{T}"].update(rec, target)
                rows[mode] = rec
        if self.distribution:  # Inception features once per image, shared by FID and KID
            feature = self.distribution["feature"]
            real, fake = feature(target), feature(rows["random" if "random" in rows else self.modes[0]])
            for key in ("fid", "kid"):
                self.distribution[key].update(real.double(), real=True)
                self.distribution[key].update(fake.double(), real=False)
        self._seen += x.shape[0]
        if module.global_rank == 0:
            self._keep_for_grid(module, [target, *rows.values()], batch_idx)

    def _keep_for_grid(self, module, columns: list[torch.Tensor], batch_idx: int) -> None:
        """Keep evenly spaced tiles of every validation batch, so the grid spans the held-out set (all classes
        of a folder-per-class data set, which is sorted by path), not only its first files."""
        n = self.conf.grid_images
        batches = _num_val_batches(module)
        per_batch = max(1, -(-n // batches))
        idx = torch.linspace(0, columns[0].shape[0] - 1, min(per_batch, columns[0].shape[0])).round().long()
        picked = [c[idx.to(c.device)].cpu() for c in columns]
        self._grid = (
            picked if self._grid is None else [torch.cat([g, p]) for g, p in zip(self._grid, picked, strict=True)]
        )

    def finish(self, module: pl.LightningModule) -> tuple[dict[str, float], Path | None]:
        """Compute (synchronised) scores and write the grid; returns ({"val/<mode>_T<T>/<metric>": v}, png)."""
        if self.metrics is None or module.trainer.sanity_checking:
            return {}, None
        scores: dict[str, float] = {}
        for name, metric in self.metrics.items():
            for key, value in metric.compute().items():
                scores[f"val/{name}/{key}"] = float(value)
            metric.reset()
        if self.distribution:
            seen = int(module.all_gather(torch.tensor(self._seen, device=module.device)).sum())
            if seen >= 2:
                self.distribution["kid"].subset_size = min(self.conf.kid_subset_size, seen)
                kid, kid_std = self.distribution["kid"].compute()
                scores.update({"val/fid": float(self.distribution["fid"].compute()), "val/kid": float(kid)})
                scores["val/kid_std"] = float(kid_std)
        headline = f"{self.modes[0]}_T{max(self.conf.T)}" if self.modes else None
        for key in ("psnr", "ssim", "lpips"):
            if headline and f"val/{headline}/{key}" in scores:
                scores[f"val/{key}"] = scores[f"val/{headline}/{key}"]
        path = None
        if self._grid is not None:
            n = self.conf.grid_images
            keep = torch.linspace(0, self._grid[0].shape[0] - 1, min(n, self._grid[0].shape[0])).round().long()
            rows = [upscale_to(r[keep], 96) for r in self._grid]  # 32-px tiles drawn large enough to judge
            path = step_image_path(module, "val")
            save_grid(torch.cat(rows), path, nrow=rows[0].shape[0])
            self._grid = None
        return scores, path


def _distribution_metrics(subset_size: int) -> dict[str, torch.nn.Module] | None:
    """torchmetrics FID and KID sharing one offline Inception; None (and one warning) without its weights."""
    import warnings

    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    from rockgen.metrics import fid_unavailable_reason
    from rockgen.metrics.fid import InceptionFeatures, Precomputed

    reason = fid_unavailable_reason()
    if reason:
        warnings.warn(f"model.evaluation.kid=true: FID/KID left out of validation. {reason}", stacklevel=2)
        return None
    feature = InceptionFeatures()
    return {  # the metrics take the features computed once in update() (an identity as their extractor)
        "feature": feature,
        "fid": FrechetInceptionDistance(feature=Precomputed(feature.num_features)).double(),
        "kid": KernelInceptionDistance(feature=Precomputed(feature.num_features), subset_size=subset_size).double(),
    }


def _num_val_batches(module: pl.LightningModule) -> int:
    """Validation batches of this epoch (Lightning counts per dataloader; 1 when unknown)."""
    counts = getattr(module.trainer, "num_val_batches", None) or [1]
    total = sum(int(c) for c in counts if c not in (None, float("inf")))
    return max(1, total)
