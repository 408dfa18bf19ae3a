"""Where the training loss looks: timestep samplers p(t) and per-timestep loss weights w(t).

DiffAE trains with t ~ U{0..T−1} and an unweighted ε-MSE. The semantic encoder learns only through the
decoder's loss, and only at high t does the decoder need z_sem (at low t x_t alone nearly determines x_0), so
these knobs move the loss toward high noise. Notation: SNR(t) = ᾱ_t / (1 − ᾱ_t), k = ``timestep_power``.

    uniform:  p(t) = 1/T                                                    (DDPM, Ho et al. 2020)
    power:    t = ⌊T u^{1/(k+1)}⌋, u ~ U(0,1): density ∝ (t/T)^k, so p(t) = ((t+1)/T)^{k+1} − (t/T)^{k+1}
    high:     with probability f, t ~ U{t₀..T−1} (t₀ = ⌈a T⌉), else t ~ U{0..T−1}: p(t) = (1−f)/T + f 1{t ≥ t₀}/(T−t₀)
Importance weighting multiplies each sample's loss by (1/T) / p(t): the expected loss is then the uniform one.

Loss weights are defined on the x_0-space error ‖x̂_0 − x_0‖² and converted to the network's own loss: an
ε-MSE is SNR·‖x̂_0 − x_0‖², an x_0-MSE is ‖x̂_0 − x_0‖², a v-MSE is (1 + SNR)·‖x̂_0 − x_0‖² (Salimans & Ho 2022).
    min_snr:  x_0-weight min(SNR, γ)                                      (Min-SNR-γ, Hang et al. 2023, eq. 8)
    p2:       ε-weight 1/(k_p2 + SNR)^γ_p2, i.e. x_0-weight SNR/(k_p2 + SNR)^γ_p2   (Choi et al. 2022, eq. 8)
"""

from __future__ import annotations

import math

import torch

TIMESTEP_SAMPLERS = ("uniform", "power", "high")
LOSS_WEIGHTINGS = ("none", "min_snr", "p2")


def high_start(num_timesteps: int, high_from: float) -> int:
    """t₀ = ⌈a T⌉, the first step of the ``high`` sampler's band (kept ≤ T−1 so the band is never empty)."""
    if not 0.0 <= high_from < 1.0:
        raise ValueError(f"model.diffusion.timestep_high_from must be in [0, 1), got {high_from}")
    return min(num_timesteps - 1, math.ceil(high_from * num_timesteps))


def timestep_pmf(
    kind: str, num_timesteps: int, *, power: float = 1.0, high_fraction: float = 0.5, high_from: float = 0.7
) -> torch.Tensor:
    """p(t) for t = 0..T−1 as a float64 tensor (T,) summing to 1 (closed forms in the module docstring)."""
    T = num_timesteps
    if kind == "uniform":
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    if kind == "power":
        if power <= -1.0:
            raise ValueError(f"model.diffusion.timestep_power must be > -1, got {power}")
        edges = (torch.arange(T + 1, dtype=torch.float64) / T) ** (power + 1)
        return edges[1:] - edges[:-1]
    if kind == "high":
        if not 0.0 <= high_fraction <= 1.0:
            raise ValueError(f"model.diffusion.timestep_high_fraction must be in [0, 1], got {high_fraction}")
        t0 = high_start(T, high_from)
        pmf = torch.full((T,), (1.0 - high_fraction) / T, dtype=torch.float64)
        pmf[t0:] += high_fraction / (T - t0)
        return pmf
    raise ValueError(f"unknown timestep sampler {kind!r} (model.diffusion.timestep_sampler); choose one of "
                     f"{TIMESTEP_SAMPLERS}")  # fmt: skip


def sample_timesteps_from(
    kind: str,
    batch: int,
    num_timesteps: int,
    device: torch.device | str,
    generator: torch.Generator | None = None,
    **pmf_kwargs: float,
) -> torch.Tensor:
    """t ~ p(t) (B,) int64 for a sampler of ``TIMESTEP_SAMPLERS`` (``uniform`` draws exactly as DDPM's randint)."""
    if kind == "uniform":  # the same random stream as before these samplers existed
        return torch.randint(0, num_timesteps, (batch,), device=device, generator=generator)
    pmf = timestep_pmf(kind, num_timesteps, **pmf_kwargs).to(torch.float32)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    t = torch.multinomial(pmf.to(gen_device), batch, replacement=True, generator=generator)
    return t.to(device)


def importance_weight(pmf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1/T) / p(t) (B,) float32: reweights losses at t ~ p back to the uniform-t expectation."""
    return (1.0 / (pmf.shape[0] * pmf.to(t.device)[t])).float()


def snr(abar: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t), any shape."""
    return abar / (1 - abar)


def loss_weight(
    kind: str,
    prediction: str,
    abar: torch.Tensor,
    *,
    min_snr_gamma: float = 5.0,
    p2_gamma: float = 1.0,
    p2_k: float = 1.0,
) -> torch.Tensor:
    """Weight (same shape as ᾱ) on the per-sample loss of a network predicting ``prediction`` (eps | x0 | v)."""
    s = snr(abar.to(torch.float64))
    if kind == "none":
        return torch.ones_like(abar)
    if kind == "min_snr":
        if min_snr_gamma <= 0:
            raise ValueError(f"model.diffusion.min_snr_gamma must be > 0, got {min_snr_gamma}")
        w_x0 = s.clamp(max=min_snr_gamma)
    elif kind == "p2":
        if p2_k <= 0 or p2_gamma < 0:
            raise ValueError(f"model.diffusion.p2_k must be > 0 and p2_gamma >= 0, got {p2_k}, {p2_gamma}")
        w_x0 = s / (p2_k + s) ** p2_gamma
    else:
        raise ValueError(f"unknown loss weighting {kind!r} (model.diffusion.loss_weighting); choose one of "
                         f"{LOSS_WEIGHTINGS}")  # fmt: skip
    # the network's own loss is c·‖x̂_0 − x_0‖² with c = SNR (ε), 1 (x_0), SNR + 1 (v)
    per_x0 = {"eps": s, "x0": torch.ones_like(s), "v": s + 1}
    if prediction not in per_x0:
        raise ValueError(f"unknown prediction {prediction!r} (model.diffusion.prediction); choose eps, x0 or v")
    return (w_x0 / per_x0[prediction]).to(abar.dtype)
