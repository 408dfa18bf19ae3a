"""Pixel-space diffusion baseline (DDPM, Ho et al. 2020; DDPM or DDIM sampling): DiffAE's UNet without z_sem.

The same network (``ConditionalUNet`` with ``cond_channels=None``), diffusion maths, EMA and optimiser as the
DiffAE ``LitModel``; only the semantic encoder is gone, so there is nothing to reconstruct and validation
draws an unconditional sample grid instead::

    rockgen template=demo_pixel                    # tiny, minutes on CPU
    model = load_checkpoint_module("logs/train/demo_pixel/checkpoints/last.ckpt")
    imgs = model.sample(16, "cpu", T=50, seed=0)                   # DDIM-50, (16, 3, S, S) in [0, 1]
    imgs = model.sample(16, "cpu", method="ddpm", seed=0)          # ancestral DDPM over all 1000 steps

Class-conditional (``model.classes=auto``: the data's sub-folders or ``model.labels_csv``): a class embedding
added to the time embedding, label dropout in training, classifier-free guidance when sampling, exactly as the
DiffAE latent DDIM, so the comparison stays fair::

    python run.py template=demo_pixel model.classes=auto
    imgs = model.sample(16, "cpu", T=20, cls="layered", guidance=2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rockgen.conditioning import (
    check_condition,
    class_index_of_codes,
    code_labels_strict,
    drop_labels,
    requested_classes,
    resolve_classes,
)
from rockgen.config import DiffusionConf, parse, to_plain
from rockgen.diffusion import Schedule, diffusion_loss
from rockgen.lit.common import log_image_file, step_image_path
from rockgen.methods.base import Method, SampleRequest, plain_sections, seeded_generator, to_unit
from rockgen.methods.protocol import GenerationMode
from rockgen.models import ConditionalUNet, UNetConfig
from rockgen.samplers import ddpm_sample, get_sampler, guided_model_fn, solver_options
from rockgen.visual import save_grid, upscale_to

METHODS = ("ddim", "ddpm")


@dataclass
class SampleGridConf:
    """Validation of an unconditional model: a grid of samples per DDIM step count, from fixed noise."""

    T: list[int] = field(default_factory=lambda: [20])  # DDIM steps of each grid row
    grid_images: int = 8
    seed: int = 0  # the same x_T at every validation, so grids show training progress


class PixelDDPM(Method):
    """Unconditional UNet on pixels (ε/x0/v by ``diffusion.prediction``) with an EMA copy that samples."""

    method_key, method_label, preset_method = "pixel", "Pixel DDPM", "pixel"

    def __init__(
        self,
        unet: dict,
        diffusion: dict | None = None,
        optim: dict | None = None,
        ema: dict | None = None,
        evaluation: dict | None = None,
        channels_last: bool = True,
        classes: list[str] | None = None,
        labels_csv: str | None = None,
        label_dropout: float = 0.1,
        guidance: float = 2.0,
    ) -> None:
        super().__init__()
        if classes == "auto":
            raise ValueError(
                "model.classes=auto is resolved from the data by task=train; building PixelDiffusion directly, "
                "give the class names as a list"
            )
        if not 0.0 <= float(label_dropout) < 1.0:
            raise ValueError(f"model.label_dropout must be in [0, 1), got {label_dropout}")
        hp = dict(
            unet=to_plain(unet),
            **plain_sections(diffusion=diffusion, optim=optim, ema=ema, evaluation=evaluation),
            channels_last=bool(channels_last),
            classes=None if classes is None else [str(c) for c in classes],
            labels_csv=labels_csv,
            label_dropout=float(label_dropout),
            guidance=float(guidance),
        )
        self.hparams = hp
        self.classes = hp["classes"] or None
        unet = {"cond_channels": None, **hp["unet"], "num_classes": len(self.classes or [])}
        unet_cfg = parse(UNetConfig, unet, "model.unet")
        if unet_cfg.cond_channels is not None:
            raise ValueError(
                f"model.unet.cond_channels must be null for the pixel baseline (no z_sem), got {unet_cfg.cond_channels}"
            )
        self.diffusion_conf = parse(DiffusionConf, hp["diffusion"], "model.diffusion")
        self._training_settings(hp)
        self.eval_conf = parse(SampleGridConf, hp["evaluation"], "model.evaluation")
        d = self.diffusion_conf
        self.schedule = Schedule.from_config(d.schedule, d.num_timesteps, const=d.beta_const)
        self.image_size = unet_cfg.image_size
        self._set_networks(ConditionalUNet(unet_cfg), channels_last=channels_last)
        self.file_class: torch.Tensor | None = None  # class index of each source file of the data (set in setup)

    # ---------------------------------------------------------------- generation
    def denoiser_fn(self, cls=None, guidance: float | None = None, n: int = 1):
        """ε̂(x_t, t) of the EMA UNet: the ``model_fn`` of the samplers (guided when a class is asked for)."""
        net = self.ema_model
        if cls is None and guidance is None:
            return lambda x, t: net(x, t)
        self.check_condition(cls, guidance)
        idx = requested_classes(cls, n, self.classes, device=self.device)
        return guided_model_fn(lambda x, t, c: net(x, t, cls=c), idx, self.model.cfg.num_classes, guidance or 1.0)

    def check_condition(self, cls=None, guidance: float | None = None) -> None:
        """Raise a clear error for a class request this checkpoint cannot serve (before any sampling)."""
        how = "this pixel model is unconditional (train it with model.classes=auto)"
        check_condition(cls, guidance, self.classes, how)

    def draw(
        self,
        req: SampleRequest,
        method: str = "ddim",
        eta: float = 0.0,
        variance: str = "fixed_large",
        progress: bool = False,
        cls=None,
        guidance: float | None = None,
        sampler: str = "ddim",
        spacing: str | None = None,
    ) -> torch.Tensor:
        """``sample``: N images (N, 3, S, S) in [0, 1] by DDIM-T (default ``evaluation.T[-1]``) or DDPM.

        ``method="ddpm"``: ancestral sampling over T respaced steps (default all ``num_timesteps``); there is no
        latent stage, so ``T_latent`` is ignored. A class-conditional model takes ``cls`` and classifier-free
        ``guidance`` w as ``LitModel.sample``. With ``method="ddim"`` the ODE is solved by ``sampler``
        (ddim | dpmpp_2m | dpmpp_3m | unipc; η > 0 needs ddim) on the steps of ``spacing`` (multistep solvers).
        """
        solver = solver_options(sampler, spacing)
        if method not in METHODS:
            raise ValueError(f"unknown sampling method {method!r} for the pixel model; choose one of {METHODS}")
        fn = self.denoiser_fn(cls, guidance, req.n)
        s, gen = self.image_size, req.generator
        x = torch.randn((req.n, 3, s, s), generator=gen, device=req.device).to(memory_format=self.memory_format)
        d = self.diffusion_conf
        kw = dict(clip_x0=d.clip_x0, prediction=d.prediction, generator=gen, progress=progress)
        if method == "ddim":
            x0 = get_sampler(sampler)(fn, x, self.schedule, req.T or self.eval_conf.T[-1], eta=eta, **kw, **solver)
        else:
            x0 = ddpm_sample(fn, x, self.schedule, req.T, variance=variance, **kw)
        return to_unit(x0)

    def generation_modes(
        self, T: tuple[int, ...] | list[int] = (25, 50), ddpm_steps: int = 1000, ddpm_probe_steps: int = 10
    ) -> list[GenerationMode]:
        """DDIM at each T, and DDPM-``ddpm_steps`` probed on ``ddpm_probe_steps`` real steps (cost extrapolated)."""

        def mode(steps: int, method: str):
            def run(n: int, seed: int, warm: bool) -> torch.Tensor:
                return self.sample(n, self.device, T=2 if warm else steps, method=method, seed=seed)

            return run

        ddpm_note = f"estimated: {ddpm_steps} × the per-step time of {ddpm_probe_steps} DDPM steps"
        return [GenerationMode(f"DDIM-{t}", "", mode(t, "ddim")) for t in T] + [
            GenerationMode(
                f"DDPM-{ddpm_steps}", ddpm_note, mode(ddpm_probe_steps, "ddpm"), ddpm_steps / ddpm_probe_steps
            )
        ]

    # ---------------------------------------------------------------- training
    def setup(self, host, stage: str) -> None:
        self.file_class = None
        if self.classes and stage == "fit":
            # class index of every source file of the data (null = unlabelled); batches carry their "source"
            dm = host.trainer.datamodule
            labels = code_labels_strict(dm.files, dm.labels(), self.hparams["labels_csv"])
            resolve_classes(labels, self.classes, "model.classes")  # each class has images
            self.file_class = class_index_of_codes(labels, self.classes, "the data (data.root)")

    def diffusion_loss(
        self, net: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None, cls=None
    ) -> torch.Tensor:
        """Per-image loss (B,) of ``net`` (``rockgen.diffusion.diffusion_loss``), with class labels ``cls``."""
        net_fn = net if cls is None else (lambda x, t: net(x, t, cls=cls))
        return diffusion_loss(self.diffusion_conf, self.schedule, net_fn, x0, generator)[0]

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0 = batch["img"].to(memory_format=self.memory_format)
        cls = None
        if self.file_class is not None:
            cls = self.file_class[batch["source"].cpu()].to(x0.device)
            cls = drop_labels(cls, self.model.cfg.num_classes, self.hparams["label_dropout"])
        loss = self.diffusion_loss(self.model, x0, cls=cls).mean()
        return loss, {"loss": loss}

    # ---------------------------------------------------------------- validation
    def validation_step(self, host, batch: dict[str, Any], batch_idx: int) -> None:
        """EMA diffusion loss on held-out tiles, with t and ε fixed per batch so values compare over time."""
        x0 = batch["img"].to(memory_format=self.memory_format)
        gen = seeded_generator(self.eval_conf.seed + batch_idx, x0.device)
        loss = self.diffusion_loss(self.ema_model, x0, gen).mean()
        host.log("val/loss", loss, sync_dist=True, batch_size=x0.shape[0])

    def validation_end(self, host) -> None:
        if host.trainer.sanity_checking or host.global_rank != 0:
            return
        conf, device = self.eval_conf, self.device
        if self.classes:
            # one row per class at the last T, guided: the grid shows control across the classes
            per = max(1, conf.grid_images // 2)
            w = self.hparams["guidance"]
            rows = [self.sample(per, device, T=conf.T[-1], seed=conf.seed, cls=c, guidance=w) for c in self.classes]
            caption = f"rows: {self.classes}, DDIM-{conf.T[-1]}, guidance {w}"
        else:
            per = conf.grid_images
            rows = [self.sample(per, device, T=T, seed=conf.seed) for T in conf.T]
            caption = "rows: DDIM-" + ", ".join(map(str, conf.T))
        path = save_grid(
            upscale_to(torch.cat(rows).cpu(), 96),
            step_image_path(host, "val"),
            nrow=per,
        )
        log_image_file(host, "val/samples", path, caption=caption)
