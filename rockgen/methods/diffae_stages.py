"""The two DiffAE training methods over the networks of ``rockgen.methods.diffae`` (``model.stage`` chooses).

``DiffAEAutoencoder`` (stage ``autoenc``, DiffAE §3.1): t ~ p(t), x_t = q_sample(x0, t, ε),
loss = ‖y − f_θ(x_t, t, Enc(x0))‖² with y = ε, x0 or v by ``model.diffusion.prediction`` (official: ε; the
demo: v), + optional LPIPS on x̂0; encoder and decoder trained jointly; the EMA copy encodes and renders.
Validation = reconstructions with inferred and random x_T (``rockgen.lit.recon_eval``).
``DiffAELatentDDIM`` (stage ``latent``, §3.3): the autoencoder is frozen; the latent DDIM learns z-normalised
z_sem (L1 ε-loss, constant β=0.008 in the paper); validation = held-out latent loss + a sample grid.
"""

from __future__ import annotations

from typing import Any

import torch

from rockgen.conditioning import drop_labels
from rockgen.diffusion import diffusion_loss, to_eps_and_x0
from rockgen.lit.common import log_image_file, step_image_path
from rockgen.lit.recon_eval import ReconstructionEvaluator
from rockgen.methods.diffae import DiffAEMethod
from rockgen.visual import save_grid, upscale_to


class DiffAEAutoencoder(DiffAEMethod):
    """Stage 1: encoder and decoder trained jointly from the diffusion loss on the clean image's z_sem."""

    stage_name = preset_method = "autoenc"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.evaluator = ReconstructionEvaluator(self.eval_conf)

    def setup(self, host, stage: str) -> None:
        if stage == "fit" and self.hparams["lpips_weight"] > 0 and self._lpips is None:
            from rockgen.metrics import build_lpips

            self._lpips = build_lpips(net="alex", require=True)  # clear error if the backbone is missing

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0 = batch["img"].to(memory_format=self.memory_format)
        d, net = self.diffusion_conf, self.model
        cond = net.encoder(x0)  # the encoder sees the clean image and is trained by the same loss
        per, out, x_t, abar = diffusion_loss(d, self.schedule, lambda x, t: net.decoder(x, t, cond=cond), x0)
        loss = per.mean()
        logs = {"diffusion_loss": loss}
        if self._lpips is not None:
            x0_hat = to_eps_and_x0(d.prediction, out.float(), abar, x_t.float())[1].clamp(-1, 1)
            perceptual = self._lpips.to(x0.device)(x0_hat, x0.float()).mean()
            loss = loss + self.hparams["lpips_weight"] * perceptual
            logs["lpips_term"] = perceptual
        return loss, {**logs, "loss": loss}

    def optimizer_setup(self):
        conf, net = self.optim_conf, self.model
        if conf.encoder_lr_scale == 1.0:
            return [*net.encoder.parameters(), *net.decoder.parameters()], conf
        # the encoder learns only through the decoder's loss: its own (larger) step size
        enc_lr = conf.lr * conf.encoder_lr_scale
        return [{"params": net.decoder.parameters()}, {"params": net.encoder.parameters(), "lr": enc_lr}], conf

    def after_optimizer_step(self) -> None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            # z_norm=batch keeps rank-local running statistics: rank 0's keep the ranks (and their EMA) identical
            for buf in self.model.encoder.z_norm.buffers():
                dist.broadcast(buf, src=0)

    def validation_start(self, host) -> None:
        self.evaluator.start(host)

    def validation_step(self, host, batch: dict[str, Any], batch_idx: int) -> None:
        x = batch["img"].to(memory_format=self.memory_format)
        self.evaluator.update(host, x, self.ema_model.encoder(x), batch_idx)

    def validation_end(self, host) -> None:
        scores, grid_path = self.evaluator.finish(host)
        if scores:
            host.log_dict(scores, sync_dist=False)
        if grid_path is not None:
            caption = "rows: originals | inferred x_T | random x_T"
            log_image_file(host, "val/reconstructions", grid_path, caption=caption)


class DiffAELatentDDIM(DiffAEMethod):
    """Stage 2: the autoencoder is frozen; only the latent MLP (and its EMA) learns."""

    stage_name = preset_method = "latent"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.latent_conf is None:
            raise ValueError("model.stage=latent needs a model.latent section (use a rock*_latent template)")
        self.model.encoder.requires_grad_(False)
        self.model.decoder.requires_grad_(False)
        self.code_class: torch.Tensor | None = None  # class index of each latents-file row (set in setup)

    def setup(self, host, stage: str) -> None:
        if stage == "fit":
            self.prepare_latent_training()

    def prepare_latent_training(self) -> None:
        """Load the frozen autoencoder and the latent statistics (checked against each other)."""
        from rockgen.methods.latent_setup import load_autoencoder_and_latents

        load_autoencoder_and_latents(self)

    def optimizer_setup(self):
        return self.model.latent_net.parameters(), self.latent_conf.optim

    def ema_policy(self):
        return self.latent_conf.ema, [(self.ema_model.latent_net, self.model.latent_net)]

    def latent_loss(self, batch: dict[str, Any], generator=None, dropout: float = 0.0) -> torch.Tensor:
        """Mean diffusion loss of the latent DDIM on a batch of codes ``z`` (B, D), z-normalised first."""
        zn = (batch["z"].float() - self.latent_mean) / self.latent_std
        net = self.model.latent_net
        net_fn = net
        if self.code_class is not None:
            # classifier-free guidance training: the row's class, replaced by the null token with p = dropout
            cls = drop_labels(self.code_class[batch["index"].cpu()].to(zn.device), net.null_class, dropout, generator)
            net_fn = lambda x, t: net(x, t, cls=cls)  # noqa: E731
        per, *_ = diffusion_loss(self.latent_conf.diffusion, self.latent_schedule, net_fn, zn, generator)
        return per.mean()

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = self.latent_loss(batch, dropout=self.latent_conf.label_dropout)
        return loss, {"latent_loss": loss}

    def validation_step(self, host, batch: dict[str, Any], batch_idx: int) -> None:
        gen = torch.Generator(device=self.device).manual_seed(self.latent_conf.seed + batch_idx)
        loss = self.latent_loss(batch, generator=gen)  # fixed t and noise: comparable across epochs
        host.log("val/latent_loss", loss, sync_dist=True, batch_size=batch["z"].shape[0])

    def validation_end(self, host) -> None:
        if host.trainer.sanity_checking:
            return
        conf, device = self.latent_conf, self.device
        n = conf.grid_samples
        gen = torch.Generator(device=device).manual_seed(conf.seed)
        cls, guidance, nrow = None, None, int(n**0.5 + 0.999)
        if self.classes:
            # one row per class (the grid shows control, not the first classes only)
            k = len(self.classes)
            nrow = max(1, n // k)
            n = nrow * k
            cls, guidance = torch.arange(k).repeat_interleave(nrow).tolist(), conf.guidance
        zn = self.sample_latents(n, device, generator=gen, normalised=True, cls=cls, guidance=guidance)
        # samples of a well-trained latent DDIM have unit variance in normalised space
        host.log("val/sample_std", zn.std(), sync_dist=False)
        if host.global_rank == 0:
            x_T = torch.randn(n, 3, self.image_size, self.image_size, generator=gen, device=device)
            images = self.render(x_T, self.denormalise_latents(zn))
            path = step_image_path(host, "samples")
            save_grid(upscale_to(images, 96), path, nrow=nrow)
            what = f"rows: {self.classes}, guidance {guidance}" if cls is not None else "unconditional samples"
            log_image_file(host, "val/samples", path, caption=f"{what}, step {host.global_step}")


STAGES = {"autoenc": DiffAEAutoencoder, "latent": DiffAELatentDDIM}


def diffae_method(*args: Any, stage: str = "autoenc", **hparams: Any) -> DiffAEMethod:
    """The DiffAE method of ``model.stage`` built from the LitModel arguments."""
    if stage not in STAGES:
        raise ValueError(f"unknown model.stage {stage!r}; choose one of {sorted(STAGES)}")
    return STAGES[stage](*args, stage=stage, **hparams)
