"""Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6).

One network trained with label dropout predicts both ε̂(x_t, t, c) and ε̂(x_t, t, ∅). The guided prediction is

    ε̃ = ε̂(x_t, t, ∅) + w · (ε̂(x_t, t, c) − ε̂(x_t, t, ∅))

so w = 0 is the unconditional model, w = 1 the conditional one and w > 1 pushes further towards c. (Ho &
Salimans write (1 + w')·ε_c − w'·ε_∅: their w' is our w − 1.) The combination is linear in the network output,
so it applies unchanged to ε-, v- and x0-prediction (each is linear in ε at fixed x_t). The result is an
ordinary ``model_fn(x_t, t)``, so every sampler in ``rockgen.samplers`` takes it.

Usage:
    fn = guided_model_fn(lambda x, t, c: net(x, t, cls=c), cls, null_class=net.null_class, guidance=2.0)
    z0 = ddim_sample(fn, noise, schedule, 20, clip_x0=False)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CondModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cfg_combine(out_cond: torch.Tensor, out_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """ε̃ = ε_∅ + w (ε_c − ε_∅) for outputs of the same shape (Ho & Salimans 2022, eq. 6)."""
    return out_uncond + float(guidance) * (out_cond - out_uncond)


def guided_model_fn(
    model_fn: CondModelFn, cls: torch.Tensor, null_class: int, guidance: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model_fn(x, t, cls)`` with class indices ``cls`` (B,) bound and guidance w applied → ``fn(x, t)``.

    w = 1 runs the conditional branch only and w = 0 the unconditional one only (one forward pass); any other w
    runs both in one batch of 2B rows, so the network is called once per step.
    """
    w = float(guidance)
    if not torch.isfinite(torch.tensor(w)) or w < 0:
        raise ValueError(f"guidance must be a finite number >= 0 (0 = unconditional, 1 = conditional), got {guidance}")
    null = torch.full_like(cls, int(null_class))
    if w == 1.0:
        return lambda x, t: model_fn(x, t, cls)
    if w == 0.0:
        return lambda x, t: model_fn(x, t, null)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cls, null]))
        out_c, out_u = out.chunk(2)
        return cfg_combine(out_c, out_u, w)

    return fn
