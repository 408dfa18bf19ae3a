"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on the full chain or any subset of steps.

For kept steps t_0 < … < t_{N−1} the chain is respaced: β'_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}} (ᾱ_{t_{−1}} = 1), and
each step samples the posterior q(x_{s} | x_t, x̂_0) with mean (eq. 7)
    μ = √ᾱ_s β'/(1−ᾱ_t) · x̂_0 + √(1−β') (1−ᾱ_s)/(1−ᾱ_t) · x_t
and variance β' ("fixed_large", DiffAE's choice) or β̃ = β'(1−ᾱ_s)/(1−ᾱ_t) ("fixed_small").
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from rockgen.diffusion.schedules import Schedule
from rockgen.samplers.ddim import ModelFn, _abar_at, _predict, ddim_timesteps

VARIANCES = ("fixed_large", "fixed_small")


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: Schedule,
    num_steps: int | None = None,
    *,
    variance: str = "fixed_large",
    clip_x0: bool = True,
    prediction: str = "eps",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling x_T → x_0 over ``num_steps`` kept steps (default: all T)."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; choose one of {VARIANCES}")
    steps = ddim_timesteps(num_steps or schedule.num_timesteps, schedule.num_timesteps).tolist()
    for i in tqdm(range(len(steps) - 1, -1, -1), desc="DDPM", disable=not progress, leave=False):
        a_t = _abar_at(schedule, steps[i])
        a_s = _abar_at(schedule, steps[i - 1] if i > 0 else -1)
        beta = 1 - a_t / a_s
        _, x0 = _predict(model_fn, x, steps[i], a_t, prediction, clip_x0)
        mean = (a_s**0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_s) / (1 - a_t)) * x
        if i == 0:
            x = mean
            continue
        var = beta if variance == "fixed_large" else beta * (1 - a_s) / (1 - a_t)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = mean + var**0.5 * noise
    return x
