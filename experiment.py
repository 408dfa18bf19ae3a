"""The DiffAE LightningModule: semantic encoder + conditional UNet decoder (+ latent DDIM), with an EMA copy.

Public API as in the official DiffAE (images in [-1, 1] in, [0, 1] out)::

    model = LitModel.load_from_checkpoint("logs/train/demo/checkpoints/last.ckpt", map_location="cpu")
    z_sem = model.encode(x)                          # (B, 3, H, W) in [-1, 1] → (B, 512)
    x_T = model.encode_stochastic(x, z_sem, T=50)    # DDIM inversion → (B, 3, H, W)
    rec = model.render(x_T, z_sem, T=50)             # DDIM decoding → (B, 3, H, W) in [0, 1]
    new = model.sample(16, "cpu", T=20, T_latent=20) # latent DDIM → decoder (after the latent stage)

Training (stage ``autoenc``): t ~ U{0..T-1}, x_t = q_sample(x0, t, ε), loss = ‖ε − ε_θ(x_t, t, Enc(x0))‖²
(+ optional LPIPS on x̂0); encoder and decoder trained jointly; the EMA copy is what encodes and renders.
Stage ``latent`` (see ``rockgen.lit.latent``) freezes the autoencoder and trains the latent DDIM on z-normalised
z_sem. The baselines live in ``rockgen.lit`` and are re-exported here.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import pytorch_lightning as pl
import torch

from rockgen.config import DiffusionConf, EMAConf, EvalConf, OptimConf, parse, to_plain
from rockgen.diffusion import Schedule, q_sample, regression_loss, sample_timesteps, to_eps_and_x0
from rockgen.diffusion import training_target
from rockgen.ema import ema_decay, ema_update_module_
from rockgen.lit.common import RockgenModule, build_optimizer, check_finite_loss, check_images, log_image_file
from rockgen.lit.recon_eval import ReconstructionEvaluator
from rockgen.models import DiffAE, EncoderConfig, UNetConfig
from rockgen.samplers import ddim_invert, ddim_sample

log = logging.getLogger(__name__)
# The EMA copy is meant to stay in eval mode (no dropout) while the trained copy trains.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)


class LitModel(RockgenModule):
    """DiffAE (Preechakul et al., CVPR 2022) as a LightningModule; hyper-parameters are plain dicts."""

    def __init__(self, unet: dict, encoder: dict, diffusion: dict | None = None, optim: dict | None = None,
                 ema: dict | None = None, evaluation: dict | None = None, lpips_weight: float = 0.0,
                 channels_last: bool = True) -> None:
        super().__init__()
        hp = dict(unet=to_plain(unet), encoder=to_plain(encoder), diffusion=to_plain(diffusion or {}),
                  optim=to_plain(optim or {}), ema=to_plain(ema or {}), evaluation=to_plain(evaluation or {}),
                  lpips_weight=float(lpips_weight), channels_last=bool(channels_last))
        self.save_hyperparameters(hp)
        unet_cfg = parse(UNetConfig, hp["unet"], "model.unet")
        enc_cfg = parse(EncoderConfig, hp["encoder"], "model.encoder")
        self.diffusion_conf = parse(DiffusionConf, hp["diffusion"], "model.diffusion")
        self.optim_conf = parse(OptimConf, hp["optim"], "model.optim")
        self.ema_conf = parse(EMAConf, hp["ema"], "model.ema")
        self.eval_conf = parse(EvalConf, hp["evaluation"], "model.evaluation")
        d = self.diffusion_conf
        self.schedule = Schedule.from_config(d.schedule, d.num_timesteps, const=d.beta_const)
        self.image_size = unet_cfg.image_size
        self.model = DiffAE(enc_cfg, unet_cfg)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)
        self._lpips: torch.nn.Module | None = None  # built in setup(); kept out of the state dict
        self.evaluator = ReconstructionEvaluator(self.eval_conf)

    # ---------------------------------------------------------------- public API (official DiffAE names)
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic code z_sem (B, D) of images x (B, 3, H, W) in [-1, 1], by the EMA encoder."""
        check_images(x, self.image_size, "encode(x)")
        return self.ema_model.encoder(x.to(self.device, memory_format=self.memory_format)).float()

    @torch.no_grad()
    def encode_stochastic(self, x: torch.Tensor, cond: torch.Tensor, T: int | None = None,
                          progress: bool = False) -> torch.Tensor:
        """DDIM-invert images x (B, 3, H, W) in [-1, 1] given z_sem ``cond`` → x_T (B, 3, H, W)."""
        check_images(x, self.image_size, "encode_stochastic(x)")
        x = x.to(self.device, memory_format=self.memory_format)
        return ddim_invert(self.decoder_fn(cond), x, self.schedule, T or self.eval_conf.render_T,
                           clip_x0=self.diffusion_conf.clip_x0, prediction=self.diffusion_conf.prediction,
                           progress=progress)

    @torch.no_grad()
    def render(self, noise: torch.Tensor, cond: torch.Tensor | None = None, T: int | None = None,
               progress: bool = False) -> torch.Tensor:
        """Decode x_T ``noise`` (B, 3, H, W) with z_sem ``cond`` (B, D) by DDIM → images in [0, 1].

        With ``cond=None`` z_sem is drawn from the latent DDIM (needs a latent-stage checkpoint).
        """
        if cond is None:
            cond = self.sample_cond(noise.shape[0], noise.device)
        x = noise.to(self.device, memory_format=self.memory_format)
        x0 = ddim_sample(self.decoder_fn(cond), x, self.schedule, T or self.eval_conf.render_T,
                         clip_x0=self.diffusion_conf.clip_x0, prediction=self.diffusion_conf.prediction,
                         progress=progress)
        return ((x0.float() + 1) / 2).clamp(0, 1)

    def sample_cond(self, n: int, device: torch.device | str, T_latent: int | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z_sem (n, D) from the latent DDIM; only latent-stage models can."""
        raise RuntimeError("this checkpoint holds only the autoencoder: unconditional sampling needs the latent "
                           "DDIM (train it with template=<res>_latent, then load that checkpoint)")

    def decoder_fn(self, cond: torch.Tensor):
        """ε̂(x_t, t) of the EMA decoder with z_sem ``cond`` bound: the ``model_fn`` of the samplers."""
        dec = self.ema_model.decoder
        cond = cond.to(self.device)
        return lambda x, t: dec(x, t, cond=cond)

    # ---------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.lpips_weight > 0 and self._lpips is None:
            from rockgen.metrics import build_lpips

            self._lpips = build_lpips(net="alex", require=True)  # clear error if the backbone is missing

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x0 = batch["img"].to(memory_format=self.memory_format)
        d = self.diffusion_conf
        t = sample_timesteps(x0.shape[0], d.num_timesteps, x0.device)
        noise = torch.randn_like(x0)
        x_t = q_sample(self.schedule, x0, t, noise)
        cond = self.model.encoder(x0)  # the encoder sees the clean image and is trained by the same loss
        out = self.model.decoder(x_t, t, cond=cond)
        abar = self.schedule.abar(t, x0)
        loss = regression_loss(d.loss, out, training_target(d.prediction, x0, noise, abar)).mean()
        logs = {"train/diffusion_loss": loss.detach()}
        if self._lpips is not None:
            x0_hat = to_eps_and_x0(d.prediction, out.float(), abar, x_t.float())[1].clamp(-1, 1)
            perceptual = self._lpips.to(x0.device)(x0_hat, x0.float()).mean()
            loss = loss + self.hparams.lpips_weight * perceptual
            logs["train/lpips_term"] = perceptual.detach()
        check_finite_loss(self, loss)
        logs["train/loss"] = loss.detach()
        self.log_dict(logs, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        decay = ema_decay(self.trainer.global_step, self.ema_conf.decay, "tf" if self.ema_conf.warmup else None)
        ema_update_module_(self.ema_model, self.model, decay)

    def configure_optimizers(self):
        return build_optimizer(self.model.parameters(), self.optim_conf)

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self.evaluator.start(self)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = batch["img"].to(memory_format=self.memory_format)
        cond = self.ema_model.encoder(x)
        self.evaluator.update(self, x, cond, batch_idx)

    def on_validation_epoch_end(self) -> None:
        scores, grid_path = self.evaluator.finish(self)
        if scores:
            self.log_dict(scores, sync_dist=False)
        if grid_path is not None:
            log_image_file(self, "val/reconstructions", grid_path,
                           caption="rows: originals | inferred x_T | random x_T")


def load_model(path: str, map_location: str | torch.device = "cpu", **kwargs) -> pl.LightningModule:
    """Load any rockgen checkpoint (DiffAE or a baseline), choosing the class from its hyper-parameters."""
    from rockgen.lit.checkpoint import load_checkpoint_module

    return load_checkpoint_module(path, map_location=map_location, **kwargs)
