"""Transformer VAE-style autoencoder as a LightningModule: the fast baseline (one decoder pass per sample).

Loss per image (x in [-1, 1], D = 3·H·W values, z ∈ R^d)::

    L = ‖x − Dec(z)‖² / D  +  β · KL(q(z|x) ‖ N(0, I)) / D  (+ λ · LPIPS(Dec(z), x)),   z = μ + σ·ε

Both terms are per pixel value, so β keeps its meaning across resolutions; β = 1 is the ELBO of a Gaussian
decoder with variance ½. ``beta=0`` is a plain autoencoder: z = μ, no noise, no KL (still logged).

Generation draws z and decodes it. ``method="prior"``: z ~ N(0, I). ``method="gaussian"``: z ~ N(m, C), the
mean and covariance of the training latents (the posterior means μ of the training tiles), which follows the
data much better when β is small. The moments are buffers of this module, so they travel in its checkpoint;
they are fitted by ``rockgen task=vae_latents`` (which encodes the training split, writes
``latents.npy`` and ``latent_gaussian.npz``, and a copy of the checkpoint with the moments filled in,
``vae_gaussian.ckpt``), or in Python by ``model.fit_latent_gaussian(latents)``::

    model = load_checkpoint_module("logs/vae_latents/demo_vae/vae_gaussian.ckpt")
    mu, logvar = model.encode(x)                      # x (B, 3, S, S) in [-1, 1] → (B, d), (B, d)
    rec = model.reconstruct(x)                        # (B, 3, S, S) in [0, 1]
    new = model.sample(16, "cpu", method="gaussian", seed=0)
    path = model.interpolate(x_a, x_b, 8)             # (B, 8, 3, S, S) in [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rockgen.config import parse, to_plain
from rockgen.lit.common import check_images, log_image_file, step_image_path
from rockgen.methods.base import Device, Method, SampleRequest, seeded_generator, to_unit
from rockgen.methods.protocol import GenerationMode, ReconstructionCode
from rockgen.models.vit_ae import ViTAEConfig, ViTAutoencoder, kl_to_standard_normal, reparameterize
from rockgen.visual import save_grid

METHODS = ("gaussian", "prior")


@dataclass
class VAEEvalConf:
    """Validation: PSNR/SSIM(/LPIPS) of reconstructions of held-out tiles and a PNG grid."""

    grid_images: int = 8  # rows of the grid: originals | reconstructions | prior samples
    seed: int = 0  # the prior samples of the grid
    lpips: bool = True  # when the AlexNet backbone weights are present
    T: list[int] | None = None  # unused (decoding is one step); accepted so shared overrides (debug=tiny) apply


class VAE(Method):
    """``ViTAutoencoder`` trained by MSE + β·KL (+ LPIPS); an optional EMA copy encodes, decodes, samples."""

    method_key, method_label, preset_method = "vae", "VAE", "vae"
    generator_device = "cpu"  # latents are drawn in float64 on the CPU (see sample_latents)

    def __init__(
        self,
        net: dict,
        beta: float = 1e-3,
        lpips_weight: float = 0.0,
        optim: dict | None = None,
        ema: dict | None = None,
        use_ema: bool = True,
        evaluation: dict | None = None,
    ) -> None:
        super().__init__()
        hp = dict(
            net=to_plain(net),
            beta=float(beta),
            lpips_weight=float(lpips_weight),
            optim=to_plain(optim or {}),
            ema=to_plain(ema or {}),
            use_ema=bool(use_ema),
            evaluation=to_plain(evaluation or {}),
        )
        self.hparams = hp
        if hp["beta"] < 0 or hp["lpips_weight"] < 0:
            raise ValueError(f"model.beta and model.lpips_weight must be >= 0, got {beta}, {lpips_weight}")
        net_cfg = parse(ViTAEConfig, hp["net"], "model.net")
        self._training_settings(hp)
        self.eval_conf = parse(VAEEvalConf, hp["evaluation"], "model.evaluation")
        self.beta = hp["beta"]
        self.image_size = net_cfg.image_size
        self._set_networks(ViTAutoencoder(net_cfg), ema=use_ema)
        d = net_cfg.latent_dim
        # Moments of the training latents (see the module docstring); count 0 = not fitted yet.
        self.register_buffer("latent_mean", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("latent_cov", torch.eye(d, dtype=torch.float64))
        self.register_buffer("latent_count", torch.zeros((), dtype=torch.int64))
        self._lpips: torch.nn.Module | None = None  # built in setup(); kept out of the state dict
        # ReconstructionMetrics, built at the first validation; held in a dict so that it is not registered
        self._metrics: dict[str, Any] = {}
        self._grid: list[torch.Tensor] | None = None

    @property
    def net(self) -> ViTAutoencoder:
        """The network that encodes, decodes and samples: the EMA copy if there is one."""
        return self.ema_model if self.ema_model is not None else self.model

    # ---------------------------------------------------------------- public API
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z|x) of images x (B, 3, S, S) in [-1, 1]: (μ, log σ²), each (B, latent_dim)."""
        check_images(x, self.image_size, "encode(x)")
        mu, logvar = self.net.encode(x.to(self.device))
        return mu.float(), logvar.float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents z (B, latent_dim) → images (B, 3, S, S) in [0, 1]."""
        return to_unit(self.net.decode(z.to(self.device)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean: x (B, 3, S, S) in [-1, 1] → (B, 3, S, S) in [0, 1]."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, n: int = 8) -> torch.Tensor:
        """Decode z = (1 − w)·μ_a + w·μ_b for n evenly spaced w in [0, 1]: (B, n, 3, S, S) in [0, 1]."""
        if n < 2:
            raise ValueError(f"interpolate needs n >= 2 images (both ends included), got {n}")
        mu_a, mu_b = self.encode(x_a)[0], self.encode(x_b)[0]
        w = torch.linspace(0, 1, n, device=mu_a.device)[None, :, None]  # (1, n, 1)
        z = torch.lerp(mu_a[:, None], mu_b[:, None], w)  # (B, n, d)
        return self.decode(z.flatten(0, 1)).unflatten(0, (mu_a.shape[0], n))

    def draw(
        self,
        req: SampleRequest,
        method: str = "gaussian",
        temperature: float = 1.0,
        latent_stats: str | Path | None = None,
    ) -> torch.Tensor:
        """``sample``: decoded z of ``sample_latents`` (N, 3, S, S) in [0, 1]; ``latent_stats`` loads a
        ``latent_gaussian.npz`` first. T and T_latent (diffusion models only) are ignored."""
        if latent_stats is not None:
            self.load_latent_gaussian(latent_stats)
        return self.decode(self.draw_latents(req.n, req.device, req.generator, method, temperature))

    @torch.no_grad()
    def sample_latents(
        self, N: int, device: Device = None, seed: int | None = None, method: str = "gaussian", temperature: float = 1.0
    ) -> torch.Tensor:
        """z (N, latent_dim) float32 on ``device``: N(m, C) of the training latents (``gaussian``) or N(0, I).

        ``temperature`` scales the spread around the mean: z = m + t·L·ε with L·Lᵀ = C. Drawn in float64 on
        the CPU, so a seed gives the same latents on every device (and MPS, which has no float64, works).
        """
        return self.draw_latents(
            N, torch.device(device or self.device), seeded_generator(seed, "cpu"), method, temperature
        )

    def draw_latents(
        self, N: int, device: torch.device, generator: torch.Generator | None, method: str, temperature: float
    ) -> torch.Tensor:
        """``sample_latents`` with a CPU ``generator`` (or None: the global RNG)."""
        if method not in METHODS:
            raise ValueError(f"unknown sampling method {method!r} for the VAE; choose one of {METHODS}")
        eps = torch.randn((N, self.latent_mean.shape[0]), generator=generator, dtype=torch.float64)
        if method == "prior":
            return (eps * temperature).float().to(device)
        if not self.latent_gaussian_fitted:
            raise RuntimeError(
                "method=gaussian needs the mean and covariance of the training latents, which this model "
                "does not hold yet: run `rockgen task=vae_latents ckpt_path=<this checkpoint>` and "
                "use the vae_gaussian.ckpt it writes (or pass latent_stats=<latent_gaussian.npz>), or "
                "sample the N(0, I) prior with method=prior"
            )
        z = self.latent_mean.cpu() + temperature * eps @ self._cov_factor().T
        return z.float().to(device)

    # ---------------------------------------------------------------- generation protocol
    def generation_modes(self, **unused: Any) -> list[GenerationMode]:
        """One decoder pass of z from the fitted Gaussian of the training latents (the N(0, I) prior if none)."""
        method = "gaussian" if self.latent_gaussian_fitted else "prior"
        note = "z ~ fitted Gaussian" if method == "gaussian" else "z ~ N(0, I) prior (no fitted Gaussian)"
        return [
            GenerationMode("decode", note, lambda n, seed, warm: self.sample(n, self.device, method=method, seed=seed))
        ]

    def reconstruction_codes(self, **unused: Any) -> list[ReconstructionCode]:
        """decode(μ) of the posterior."""
        return [ReconstructionCode("z = μ (decode)", lambda x, gen: self.reconstruct(x))]

    # ---------------------------------------------------------------- the Gaussian of the training latents
    @property
    def latent_gaussian_fitted(self) -> bool:
        return int(self.latent_count) > 0

    @torch.no_grad()
    def fit_latent_gaussian(self, latents: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Set the buffers to the mean (d,) and covariance (d, d) of latents (N, d), N >= 2, in float64."""
        z = torch.as_tensor(np.asarray(latents) if not isinstance(latents, torch.Tensor) else latents)
        z = z.to(torch.float64).cpu()
        if z.ndim != 2 or z.shape[1] != self.latent_mean.shape[0] or z.shape[0] < 2:
            raise ValueError(f"expected latents (N >= 2, {self.latent_mean.shape[0]}), got {tuple(z.shape)}")
        mean = z.mean(0)
        cov = (z - mean).T @ (z - mean) / (z.shape[0] - 1)  # unbiased sample covariance
        return self._set_gaussian(mean, cov, z.shape[0])

    def load_latent_gaussian(self, path: str | Path) -> dict[str, np.ndarray]:
        """Load ``mean``, ``cov`` and ``count`` from a ``latent_gaussian.npz`` written by task=vae_latents."""
        with np.load(path) as f:
            return self._set_gaussian(torch.from_numpy(f["mean"]), torch.from_numpy(f["cov"]), int(f["count"]))

    def _set_gaussian(self, mean: torch.Tensor, cov: torch.Tensor, count: int) -> dict[str, np.ndarray]:
        if mean.shape != self.latent_mean.shape or cov.shape != self.latent_cov.shape:
            raise ValueError(
                f"latent Gaussian of shape {tuple(mean.shape)}/{tuple(cov.shape)} does not fit this "
                f"model's latent_dim {self.latent_mean.shape[0]}"
            )
        self.latent_mean.copy_(mean)
        self.latent_cov.copy_(cov)
        self.latent_count.fill_(int(count))
        return {"mean": mean.numpy(), "cov": cov.numpy(), "count": np.asarray(count)}

    def _cov_factor(self) -> torch.Tensor:
        """L with L·Lᵀ = C (Cholesky, with a little jitter when C is singular, e.g. fewer tiles than dims)."""
        cov = self.latent_cov.cpu()
        jitter = 1e-10 * float(cov.diagonal().mean().clamp(min=1e-12))
        for _ in range(8):
            factor, info = torch.linalg.cholesky_ex(cov + jitter * torch.eye(cov.shape[0], dtype=cov.dtype))
            if int(info) == 0:
                return factor
            jitter *= 100
        raise RuntimeError("the fitted latent covariance is not positive semi-definite (NaN latents?)")

    # ---------------------------------------------------------------- training
    def setup(self, host, stage: str) -> None:
        if stage == "fit" and self.hparams["lpips_weight"] > 0 and self._lpips is None:
            from rockgen.metrics import build_lpips

            self._lpips = build_lpips(net="alex", require=True)  # clear error if the backbone is missing

    def losses(self, net: ViTAutoencoder, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms (scalars) of a batch x (B, 3, S, S) in [-1, 1]; ``loss`` is their weighted sum."""
        mu, logvar = net.encode(x)
        z = reparameterize(mu, logvar) if self.beta > 0 and net.training else mu
        x_hat = net.decode(z).float()
        mse = F.mse_loss(x_hat, x.float())
        kl = kl_to_standard_normal(mu.float(), logvar.float()).mean()
        out = {"mse": mse, "kl": kl, "loss": mse + self.beta * kl / x[0].numel()}
        if self._lpips is not None and net.training:
            out["lpips_term"] = self._lpips.to(x.device)(x_hat.clamp(-1, 1), x.float()).mean()
            out["loss"] = out["loss"] + self.hparams["lpips_weight"] * out["lpips_term"]
        return out

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = self.losses(self.model, batch["img"])
        return terms["loss"], terms

    # ---------------------------------------------------------------- validation
    def validation_start(self, host) -> None:
        if "recon" not in self._metrics:
            from rockgen.metrics import ReconstructionMetrics

            self._metrics["recon"] = ReconstructionMetrics(lpips=None if self.eval_conf.lpips else False)
        self._metrics["recon"].to(self.device).reset()
        self._grid = None

    def validation_step(self, host, batch: dict[str, Any], batch_idx: int) -> None:
        x = batch["img"]
        terms = self.losses(self.net, x)
        host.log_dict({"val/mse": terms["mse"], "val/kl": terms["kl"]}, sync_dist=True, batch_size=x.shape[0])
        rec = to_unit(self.net.decode(self.net.encode(x)[0]))
        target = (x.float() + 1) / 2
        self._metrics["recon"].update(rec, target)
        if batch_idx == 0 and host.global_rank == 0:
            n = self.eval_conf.grid_images
            self._grid = [target[:n].cpu(), rec[:n].cpu()]

    def validation_end(self, host) -> None:
        if host.trainer.sanity_checking:
            return
        scores = {f"val/{k}": v for k, v in self._metrics["recon"].compute().items()}
        host.log_dict(scores, sync_dist=False)  # torchmetrics already synchronised them across ranks
        if self._grid is not None:
            n = self._grid[0].shape[0]
            samples = self.sample(n, self.device, method="prior", seed=self.eval_conf.seed).cpu()
            path = save_grid(
                torch.cat([*self._grid, samples]),
                step_image_path(host, "val"),
                nrow=n,
            )
            caption = "rows: originals | reconstructions | prior samples"
            log_image_file(host, "val/reconstructions", path, caption=caption)
            self._grid = None
