"""DDIM sampling and DDIM inversion (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12).

Samplers are plain functions over ``model_fn(x_t, t) -> network output`` (conditioning such as z_sem is bound
by the caller, e.g. ``functools.partial(unet, cond=z_sem)``). ``t`` passed to the network is always the
original 1000-step index, so a model trained with T=1000 can be sampled with any number of steps.

Step from t to s < t, with x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t and
    σ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s):
    x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε̂ + σ z.
With ``clip_x0`` x̂_0 is clamped to [-1, 1] and ε̂ re-derived from the clamped x̂_0 (as the official DiffAE does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from rockgen.diffusion.gaussian import eps_from_x0, to_eps_and_x0
from rockgen.diffusion.schedules import Schedule

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(num_steps: int, num_timesteps: int = 1000) -> torch.Tensor:
    """The kept steps t_i = ⌊i·T/N⌋, i = 0..N−1, ascending (N, ) int64.

    Any N in 1..T works; for divisors of T this equals DiffAE's ``ddimN`` spacing (T=20 → 0, 50, …, 950).
    """
    if not 1 <= int(num_steps) <= num_timesteps:
        raise ValueError(f"number of DDIM steps must be in 1..{num_timesteps}, got {num_steps}")
    i = torch.arange(int(num_steps), dtype=torch.int64)
    return (i * num_timesteps) // int(num_steps)


def _abar_at(schedule: Schedule, t: int) -> float:
    return 1.0 if t < 0 else float(schedule.alphas_cumprod[t])


def _predict(
    model_fn: ModelFn, x: torch.Tensor, t: int, abar: float, prediction: str, clip_x0: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the network at step t and return (ε̂, x̂_0), clipping x̂_0 if asked."""
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    a = torch.tensor(abar, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype, device=x.device)
    out = model_fn(x, tt).to(x.dtype)
    eps, x0 = to_eps_and_x0(prediction, out, a, x)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = eps_from_x0(a, x, x0)
    return eps, x0


def ddim_step(
    eps: torch.Tensor,
    x0: torch.Tensor,
    abar_t: float,
    abar_s: float,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM update from ᾱ_t to ᾱ_s given ε̂ and x̂_0 (eq. 12); η=0 is deterministic."""
    sigma = 0.0
    if eta > 0:
        sigma = eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)) ** 0.5
    x = abar_s**0.5 * x0 + max(1 - abar_s - sigma**2, 0.0) ** 0.5 * eps
    if sigma > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        x = x + sigma * noise
    return x


def ddim_sample(
    model_fn: ModelFn,
    x: torch.Tensor,
    schedule: Schedule,
    num_steps: int,
    *,
    eta: float = 0.0,
    clip_x0: bool = True,
    prediction: str = "eps",
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    grad: bool = False,
    resume: dict | None = None,
    on_state: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """DDIM sampling from x_T (taken to be at the last kept step) down to x_0 (Song et al. 2021).

    x (B, ...) noise; returns x_0 (B, ...) in the network's data range ([-1, 1] for images). ``grad=True``
    records the autograd graph through every step (differentiable sampling, e.g. optimising x_T or z_sem);
    otherwise it runs under ``no_grad``. ``callback(i, x, x0)`` after each step may raise to stop early.
    ``on_state(state)`` after each step gets everything the rest of the loop needs; ``resume=state`` continues
    from it and gives the uninterrupted result exactly (η = 0 only: the noise of η > 0 is not replayed).
    """
    if (resume is not None or on_state is not None) and eta > 0:
        raise ValueError("resumable DDIM needs eta=0 (the noise drawn with eta > 0 is not part of the state)")
    with torch.enable_grad() if grad else torch.no_grad():
        return _ddim_loop(
            model_fn, x, schedule, num_steps, eta, clip_x0, prediction, generator, progress, callback, resume, on_state
        )


def ddim_descent(schedule: Schedule, num_steps: int) -> list[tuple[int, int, float, float]]:
    """DDIM's kept steps from the top down as (i, t_i, ᾱ_t, ᾱ_s), s = t_{i−1}; past t_0 (i = 0) ᾱ_s = 1 (x_0)."""
    steps = ddim_timesteps(num_steps, schedule.num_timesteps).tolist()
    abar = [_abar_at(schedule, t) for t in steps]
    return [(i, steps[i], abar[i], abar[i - 1] if i > 0 else 1.0) for i in range(len(steps) - 1, -1, -1)]


def _ddim_loop(
    model_fn, x, schedule, num_steps, eta, clip_x0, prediction, generator, progress, callback, resume, on_state
):
    descent = ddim_descent(schedule, num_steps)
    done = 0
    if resume is not None:
        x, done = check_resume(resume, "ddim", x)["x"], len(descent) - 1 - int(resume["next"])
    for i, t, a_t, a_s in tqdm(descent[done:], total=len(descent), initial=done, desc="DDIM", disable=not progress,
                               leave=False):  # fmt: skip
        eps, x0 = _predict(model_fn, x, t, a_t, prediction, clip_x0)
        noise = None
        if eta > 0 and i > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = ddim_step(eps, x0, a_t, a_s, eta if i > 0 else 0.0, noise)
        if on_state is not None:
            on_state({"sampler": "ddim", "next": i - 1, "x": x})
        if callback is not None:
            callback(i, x, x0)
    return x


def check_resume(state: dict, sampler: str, x: torch.Tensor) -> dict:
    """``state`` (from a sampler's ``on_state``) moved to x's device, after checking it belongs to ``sampler``."""
    if state.get("sampler") != sampler:
        raise ValueError(f"cannot resume sampler={sampler} from a state of sampler={state.get('sampler')}")
    if tuple(state["x"].shape) != tuple(x.shape):
        raise ValueError(f"cannot resume: the saved state is {tuple(state['x'].shape)}, x_T is {tuple(x.shape)}")

    return map_state(state, lambda v: v.to(device=x.device, dtype=x.dtype))


def map_state(state: dict, fn: Callable[[torch.Tensor], torch.Tensor]) -> dict:
    """A solver state with ``fn`` applied to every tensor (values are tensors, numbers or lists of them)."""

    def walk(v):
        if isinstance(v, torch.Tensor):
            return fn(v)
        return [walk(u) for u in v] if isinstance(v, list) else v

    return {k: walk(v) for k, v in state.items()}


@torch.no_grad()
def ddim_invert(
    model_fn: ModelFn,
    x0: torch.Tensor,
    schedule: Schedule,
    num_steps: int,
    *,
    clip_x0: bool = True,
    prediction: str = "eps",
    progress: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM inversion x_0 → x_T ("stochastic encoding" in DiffAE, §3.2).

    The mirror image of ``ddim_sample`` with η=0: x_0 → t_0 → t_1 → … → t_{N−1}, evaluating the network at the
    current point. The result is the x_T that ``ddim_sample`` starts from. (Official DiffAE instead ends with a
    jump to ᾱ=0, i.e. returns ε̂ at the last step; that x_T does not sit on the sampler's first step.)
    """
    steps = ddim_timesteps(num_steps, schedule.num_timesteps).tolist()
    x = x0
    for i in tqdm(range(len(steps)), desc="DDIM inversion", disable=not progress, leave=False):
        a_next = _abar_at(schedule, steps[i])
        if i == 0:
            # x_0 → t_0: mirror of the sampler's last step (t_0 → x_0): ε̂ from the network at t_0, x̂_0 = x_0.
            eps, _ = _predict(model_fn, x, steps[0], a_next, prediction, clip_x0=False)
            x = ddim_step(eps, x, 1.0, a_next)
        else:
            a_cur = _abar_at(schedule, steps[i - 1])
            eps, x0_hat = _predict(model_fn, x, steps[i - 1], a_cur, prediction, clip_x0)
            x = ddim_step(eps, x0_hat, a_cur, a_next)
    return x
