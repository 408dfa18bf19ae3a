"""Noise schedules β_t and the quantities derived from them (DDPM, Ho et al. 2020, eq. 4).

Everything is computed in float64 once and kept as tensors; callers index with ``extract`` and cast to the
working dtype, so nothing is rebuilt per sampling step and nothing is a NumPy array (MPS-safe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine", "const")


def make_betas(
    kind: str,
    num_timesteps: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    const: float = 0.008,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """β_1..β_T as a float64 tensor (T,).

    ``linear``: β from ``beta_start`` to ``beta_end`` (DDPM images, DiffAE decoder);
    ``cosine``: ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2) (Nichol & Dhariwal 2021, eq. 17), β clipped at ``max_beta``;
    ``const``: β_t = ``const`` for all t (DiffAE latent DDIM uses 0.008).
    """
    if num_timesteps < 1:
        raise ValueError(f"diffusion.num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if kind == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        abar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)
    if kind == "const":
        return torch.full((num_timesteps,), float(const), dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {kind!r} (diffusion.schedule); choose one of {SCHEDULES}")


@dataclass(frozen=True)
class Schedule:
    """Immutable diffusion schedule: β, α = 1 − β and ᾱ_t = Π_{s≤t} α_s, all float64 (T,)."""

    betas: torch.Tensor

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or not torch.all((b > 0) & (b < 1)):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        object.__setattr__(self, "betas", b.to(torch.float64))
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1 - self.betas, 0))

    @classmethod
    def from_config(cls, kind: str = "linear", num_timesteps: int = 1000, **kwargs) -> Schedule:
        return cls(make_betas(kind, num_timesteps, **kwargs))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for integer steps t (B,), shaped (B, 1, ..., 1) to broadcast against ``like``, in its dtype."""
        return extract(self.alphas_cumprod, t, like)


def extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] as (B, 1, ..., 1) in the dtype and device of ``like`` (float32 at least)."""
    dtype = like.dtype if like.dtype == torch.float64 else torch.float32
    # cast before moving: float64 tensors cannot live on every device (Apple MPS)
    out = values.to(dtype).to(like.device)[t.to(like.device).long()]
    return out.reshape(-1, *([1] * (like.ndim - 1)))
