"""The training objective of a diffusion model over any data (images or latent codes): one loss for all methods."""

from __future__ import annotations

import torch

from rockgen.diffusion.gaussian import q_sample, regression_loss, to_eps_and_x0, training_target
from rockgen.diffusion.weighting import (
    high_start,
    importance_weight,
    loss_weight,
    sample_timesteps_from,
    timestep_pmf,
)


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
