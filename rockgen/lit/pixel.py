"""Pixel-space diffusion baseline (DDPM, Ho et al. 2020; DDPM or DDIM sampling): DiffAE's UNet without z_sem.

The same network (``ConditionalUNet`` with ``cond_channels=None``), diffusion maths, EMA and optimiser as the
DiffAE ``LitModel``; only the semantic encoder is gone, so there is nothing to reconstruct and validation
draws an unconditional sample grid instead::

    rockgen template=demo_pixel                    # tiny, minutes on CPU
    model = load_checkpoint_module("logs/train/demo_pixel/checkpoints/last.ckpt")
    imgs = model.sample(16, "cpu", T=50, seed=0)                   # DDIM-50, (16, 3, S, S) in [0, 1]
    imgs = model.sample(16, "cpu", method="ddpm", seed=0)          # ancestral DDPM over all 1000 steps
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from rockgen.config import DiffusionConf, EMAConf, OptimConf, parse, to_plain
from rockgen.diffusion import Schedule, q_sample, regression_loss, sample_timesteps, training_target
from rockgen.lit.common import (
    RockgenModule,
    build_optimizer,
    check_finite_loss,
    ema_step,
    log_image_file,
    run_dir_of,
    seeded_generator,
    trainer_precision,
    warn_unused,
)
from rockgen.models import ConditionalUNet, UNetConfig
from rockgen.samplers import ddim_sample, ddpm_sample
from rockgen.visual import save_grid

log = logging.getLogger(__name__)

METHODS = ("ddim", "ddpm")


@dataclass
class SampleGridConf:
    """Validation of an unconditional model: a grid of samples per DDIM step count, from fixed noise."""

    T: list[int] = field(default_factory=lambda: [20])  # DDIM steps of each grid row
    grid_images: int = 8
    seed: int = 0  # the same x_T at every validation, so grids show training progress


class PixelDiffusion(RockgenModule):
    """Unconditional UNet on pixels (ε/x0/v by ``diffusion.prediction``) with an EMA copy that samples."""

    def __init__(
        self,
        unet: dict,
        diffusion: dict | None = None,
        optim: dict | None = None,
        ema: dict | None = None,
        evaluation: dict | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        hp = dict(
            unet=to_plain(unet),
            diffusion=to_plain(diffusion or {}),
            optim=to_plain(optim or {}),
            ema=to_plain(ema or {}),
            evaluation=to_plain(evaluation or {}),
            channels_last=bool(channels_last),
        )
        self.save_hyperparameters(hp)
        unet_cfg = parse(UNetConfig, {"cond_channels": None, **hp["unet"]}, "model.unet")
        if unet_cfg.cond_channels is not None:
            raise ValueError(
                f"model.unet.cond_channels must be null for the pixel baseline (no z_sem), got {unet_cfg.cond_channels}"
            )
        self.diffusion_conf = parse(DiffusionConf, hp["diffusion"], "model.diffusion")
        self.optim_conf = parse(OptimConf, hp["optim"], "model.optim")
        self.ema_conf = parse(EMAConf, hp["ema"], "model.ema")
        self.eval_conf = parse(SampleGridConf, hp["evaluation"], "model.evaluation")
        d = self.diffusion_conf
        self.schedule = Schedule.from_config(d.schedule, d.num_timesteps, const=d.beta_const)
        self.image_size = unet_cfg.image_size
        self.model = ConditionalUNet(unet_cfg)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    # ---------------------------------------------------------------- public API
    def denoiser_fn(self):
        """ε̂(x_t, t) of the EMA UNet: the ``model_fn`` of the samplers."""
        net = self.ema_model
        return lambda x, t: net(x, t)

    @torch.no_grad()
    def sample(
        self,
        N: int,
        device: torch.device | str | None = None,
        T: int | None = None,
        T_latent: int | None = None,
        seed: int | None = None,
        method: str = "ddim",
        eta: float = 0.0,
        variance: str = "fixed_large",
        progress: bool = False,
        **unused: Any,
    ) -> torch.Tensor:
        """N unconditional images (N, 3, S, S) in [0, 1] by DDIM-T (default ``evaluation.T[-1]``) or DDPM.

        ``method="ddpm"``: ancestral sampling over T respaced steps (default all ``num_timesteps``). ``seed``
        fixes x_T and every noise draw; ``T_latent`` (DiffAE only) is ignored.
        """
        if method not in METHODS:
            raise ValueError(f"unknown sampling method {method!r} for the pixel model; choose one of {METHODS}")
        warn_unused("PixelDiffusion", unused)
        device = torch.device(device or self.device)
        gen = seeded_generator(seed, device)
        s = self.image_size
        x = torch.randn((N, 3, s, s), generator=gen, device=device).to(memory_format=self.memory_format)
        d = self.diffusion_conf
        kw = dict(clip_x0=d.clip_x0, prediction=d.prediction, generator=gen, progress=progress)
        if method == "ddim":
            x0 = ddim_sample(self.denoiser_fn(), x, self.schedule, T or self.eval_conf.T[-1], eta=eta, **kw)
        else:
            x0 = ddpm_sample(self.denoiser_fn(), x, self.schedule, T, variance=variance, **kw)
        return ((x0.float() + 1) / 2).clamp(0, 1)

    # ---------------------------------------------------------------- training
    def diffusion_loss(
        self, net: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-image loss (B,) of ``net`` at t ~ U{0..T-1}: ‖target − net(x_t, t)‖² (ε target for eps)."""
        d = self.diffusion_conf
        t = sample_timesteps(x0.shape[0], d.num_timesteps, x0.device, generator=generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        out = net(q_sample(self.schedule, x0, t, noise), t)
        return regression_loss(d.loss, out, training_target(d.prediction, x0, noise, self.schedule.abar(t, x0)))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x0 = batch["img"].to(memory_format=self.memory_format)
        loss = self.diffusion_loss(self.model, x0).mean()
        check_finite_loss(self, loss)
        self.log_dict({"train/loss": loss.detach()}, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        ema_step(self, self.ema_conf)

    def configure_optimizers(self):
        return build_optimizer(self.model.parameters(), self.optim_conf, trainer_precision(self))

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """EMA diffusion loss on held-out tiles, with t and ε fixed per batch so values compare over time."""
        x0 = batch["img"].to(memory_format=self.memory_format)
        gen = seeded_generator(self.eval_conf.seed + batch_idx, x0.device)
        loss = self.diffusion_loss(self.ema_model, x0, gen).mean()
        self.log("val/loss", loss, sync_dist=True, batch_size=x0.shape[0])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.global_rank != 0:
            return
        conf = self.eval_conf
        rows = [self.sample(conf.grid_images, self.device, T=T, seed=conf.seed) for T in conf.T]
        path = save_grid(
            torch.cat(rows).cpu(),
            run_dir_of(self) / "images" / f"val_step{self.global_step:07d}.png",
            nrow=conf.grid_images,
        )
        log_image_file(self, "val/samples", path, caption="rows: DDIM-" + ", ".join(map(str, conf.T)))
