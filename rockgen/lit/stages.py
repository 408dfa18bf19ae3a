"""What LitModel trains, one object per stage (no if/elif on the mode in the module).

``AutoencStage``: encoder + decoder, ε-MSE (+ LPIPS); validation = reconstructions (inferred/random x_T).
``LatentStage``: the latent DDIM over z-normalised z_sem with the autoencoder frozen (DiffAE §3.3: L1 ε-loss,
constant β=0.008); validation = held-out latent loss + an unconditional sample grid.
"""

from __future__ import annotations

from typing import Any

import torch

from rockgen.conditioning import drop_labels
from rockgen.diffusion import q_sample, regression_loss, to_eps_and_x0, training_target
from rockgen.diffusion.weighting import (
    high_start,
    importance_weight,
    loss_weight,
    sample_timesteps_from,
    timestep_pmf,
)
from rockgen.lit.common import check_finite_loss, log_image_file, run_dir_of
from rockgen.visual import save_grid, upscale_to


def diffusion_loss(
    conf, schedule, net_fn, x0: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss of ``net_fn(x_t, t)`` at t ~ p(t); returns (loss (B,), output, x_t, ᾱ_t).

    ``conf`` (DiffusionConf) chooses p(t), the loss weighting and the extra x̂_0 term (``rockgen.diffusion.weighting``);
    the defaults are DDPM's uniform t and unweighted loss.
    """
    pmf_kw = dict(
        power=conf.timestep_power, high_fraction=conf.timestep_high_fraction, high_from=conf.timestep_high_from
    )
    t = sample_timesteps_from(conf.timestep_sampler, x0.shape[0], conf.num_timesteps, x0.device, generator, **pmf_kw)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    abar = schedule.abar(t, x0)
    out = net_fn(x_t, t)
    loss = regression_loss(conf.loss, out, training_target(conf.prediction, x0, noise, abar))
    if conf.loss_weighting != "none":
        ab = abar.float().flatten()
        kw = dict(min_snr_gamma=conf.min_snr_gamma, p2_gamma=conf.p2_gamma, p2_k=conf.p2_k)
        loss = loss * loss_weight(conf.loss_weighting, conf.prediction, ab, **kw)
    if conf.x0_loss_weight > 0:
        # ‖x̂_0 − x_0‖² where the decoder must lean on z_sem (t ≥ x0_loss_from·T)
        x0_hat = to_eps_and_x0(conf.prediction, out.float(), abar.float(), x_t.float())[1]
        high = (t >= high_start(conf.num_timesteps, conf.x0_loss_from)).float()
        loss = loss + conf.x0_loss_weight * high * regression_loss("mse", x0_hat, x0)
    if conf.timestep_importance and conf.timestep_sampler != "uniform":
        loss = loss * importance_weight(timestep_pmf(conf.timestep_sampler, conf.num_timesteps, **pmf_kw), t)
    return loss, out, x_t, abar


class AutoencStage:
    """Stage 1: train encoder and decoder jointly from the diffusion loss on the clean image's z_sem."""

    name = "autoenc"

    def setup(self, module, stage: str) -> None:
        if stage == "fit" and module.hparams.lpips_weight > 0 and module._lpips is None:
            from rockgen.metrics import build_lpips

            module._lpips = build_lpips(net="alex", require=True)  # clear error if the backbone is missing

    def trainable(self, module) -> torch.nn.Module:
        return torch.nn.ModuleList([module.model.encoder, module.model.decoder])

    def ema_pair(self, module) -> tuple[torch.nn.Module, torch.nn.Module]:
        return module.ema_model, module.model

    def training_step(self, module, batch: dict[str, Any]) -> torch.Tensor:
        x0 = batch["img"].to(memory_format=module.memory_format)
        d = module.diffusion_conf
        cond = module.model.encoder(x0)  # the encoder sees the clean image and is trained by the same loss
        per, out, x_t, abar = diffusion_loss(d, module.schedule, lambda x, t: module.model.decoder(x, t, cond=cond), x0)
        loss = per.mean()
        logs = {"train/diffusion_loss": loss.detach()}
        if module._lpips is not None:
            x0_hat = to_eps_and_x0(d.prediction, out.float(), abar, x_t.float())[1].clamp(-1, 1)
            perceptual = module._lpips.to(x0.device)(x0_hat, x0.float()).mean()
            loss = loss + module.hparams.lpips_weight * perceptual
            logs["train/lpips_term"] = perceptual.detach()
        check_finite_loss(module, loss)
        logs["train/loss"] = loss.detach()
        module.log_dict(logs, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def on_validation_epoch_start(self, module) -> None:
        module.evaluator.start(module)

    def validation_step(self, module, batch: dict[str, Any], batch_idx: int) -> None:
        x = batch["img"].to(memory_format=module.memory_format)
        module.evaluator.update(module, x, module.ema_model.encoder(x), batch_idx)

    def on_validation_epoch_end(self, module) -> None:
        scores, grid_path = module.evaluator.finish(module)
        if scores:
            module.log_dict(scores, sync_dist=False)
        if grid_path is not None:
            log_image_file(
                module,
                "val/reconstructions",
                grid_path,
                caption="rows: originals | inferred x_T | random x_T",
            )


class LatentStage:
    """Stage 2: the autoencoder is frozen; only the latent MLP (and its EMA) learns."""

    name = "latent"

    def setup(self, module, stage: str) -> None:
        if stage == "fit":
            module.prepare_latent_training()

    def trainable(self, module) -> torch.nn.Module:
        return module.model.latent_net

    def ema_pair(self, module) -> tuple[torch.nn.Module, torch.nn.Module]:
        return module.ema_model.latent_net, module.model.latent_net

    def _loss(
        self, module, batch: dict[str, Any], generator: torch.Generator | None = None, dropout: float = 0.0
    ) -> torch.Tensor:
        zn = (batch["z"].float() - module.latent_mean) / module.latent_std
        net = module.model.latent_net
        net_fn = net
        if getattr(module, "code_class", None) is not None:
            # classifier-free guidance training: the row's class, replaced by the null token with p = dropout
            cls = drop_labels(module.code_class[batch["index"].cpu()].to(zn.device), net.null_class, dropout, generator)
            net_fn = lambda x, t: net(x, t, cls=cls)  # noqa: E731
        per, *_ = diffusion_loss(module.latent_conf.diffusion, module.latent_schedule, net_fn, zn, generator)
        return per.mean()

    def training_step(self, module, batch: dict[str, Any]) -> torch.Tensor:
        loss = self._loss(module, batch, dropout=module.latent_conf.label_dropout)
        check_finite_loss(module, loss)
        module.log("train/latent_loss", loss.detach(), prog_bar=True, batch_size=batch["z"].shape[0])
        return loss

    def on_validation_epoch_start(self, module) -> None:
        pass

    def validation_step(self, module, batch: dict[str, Any], batch_idx: int) -> None:
        gen = torch.Generator(device=module.device).manual_seed(module.latent_conf.seed + batch_idx)
        loss = self._loss(module, batch, generator=gen)  # fixed t and noise: comparable across epochs
        module.log("val/latent_loss", loss, sync_dist=True, batch_size=batch["z"].shape[0])

    def on_validation_epoch_end(self, module) -> None:
        if module.trainer.sanity_checking:
            return
        conf = module.latent_conf
        n = conf.grid_samples
        gen = torch.Generator(device=module.device).manual_seed(conf.seed)
        cls, guidance, nrow = None, None, int(n**0.5 + 0.999)
        if module.classes:
            # one row per class (the grid shows control, not the first classes only)
            k = len(module.classes)
            nrow = max(1, n // k)
            n = nrow * k
            cls, guidance = torch.arange(k).repeat_interleave(nrow).tolist(), conf.guidance
        zn = module.sample_latents(n, module.device, generator=gen, normalised=True, cls=cls, guidance=guidance)
        # samples of a well-trained latent DDIM have unit variance in normalised space
        module.log("val/sample_std", zn.std(), sync_dist=False)
        if module.global_rank == 0:
            images = module.render(
                torch.randn(n, 3, module.image_size, module.image_size, generator=gen, device=module.device),
                module.denormalise_latents(zn),
            )
            path = run_dir_of(module) / "images" / f"samples_step{module.global_step:07d}.png"
            save_grid(upscale_to(images, 96), path, nrow=nrow)
            what = f"rows: {module.classes}, guidance {guidance}" if cls is not None else "unconditional samples"
            log_image_file(module, "val/samples", path, caption=f"{what}, step {module.global_step}")


STAGES = {"autoenc": AutoencStage, "latent": LatentStage}
