"""Forward process q(x_t | x_0) and the ε / x_0 / v parameterisations (DDPM, Ho et al. 2020).

Notation: ``x0`` = x_0, ``x_t`` = x_t, ``eps`` = ε, ``abar`` = ᾱ_t.
    q_sample:       x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε                       (eq. 4)
    x0 from ε:      x_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t                 (eq. 15)
    ε from x0:      ε = (x_t − √ᾱ_t x_0) / √(1 − ᾱ_t)
    v (Salimans & Ho 2022): v = √ᾱ_t ε − √(1 − ᾱ_t) x_0
"""

from __future__ import annotations

import torch

from rockgen.diffusion.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")
LOSSES = ("mse", "l1")


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) with the given noise ε; x0, noise (B, ...), t (B,) int."""
    abar = schedule.abar(t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def x0_from_eps(abar: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_t − √(1 − ᾱ) ε̂) / √ᾱ."""
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def eps_from_x0(abar: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """ε = (x_t − √ᾱ x̂_0) / √(1 − ᾱ)."""
    return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def to_eps_and_x0(
    prediction: str, output: torch.Tensor, abar: torch.Tensor, x_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a network output of the given parameterisation to (ε̂, x̂_0)."""
    if prediction == "eps":
        return output, x0_from_eps(abar, x_t, output)
    if prediction == "x0":
        return eps_from_x0(abar, x_t, output), output
    if prediction == "v":
        x0 = abar.sqrt() * x_t - (1 - abar).sqrt() * output
        return abar.sqrt() * output + (1 - abar).sqrt() * x_t, x0
    raise ValueError(f"unknown prediction {prediction!r} (diffusion.prediction); choose one of {PREDICTIONS}")


def training_target(prediction: str, x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The regression target of the network for the given parameterisation."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0
    raise ValueError(f"unknown prediction {prediction!r} (diffusion.prediction); choose one of {PREDICTIONS}")


def regression_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample loss (B,): mean over all non-batch dims of (pred − target)² or |pred − target|."""
    diff = pred.float() - target.float()
    if kind == "mse":
        per = diff.square()
    elif kind == "l1":
        per = diff.abs()
    else:
        raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")
    return per.flatten(1).mean(1)


def sample_timesteps(
    batch: int, num_timesteps: int, device: torch.device | str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """t ~ U{0, …, T−1} (B,) int64: the uniform timestep sampler of DDPM/DiffAE."""
    return torch.randint(0, num_timesteps, (batch,), device=device, generator=generator)
