"""Fast multistep ODE samplers in data-prediction form: DPM-Solver++(2M, 3M) and UniPC-bh2 (order 2).

Both are pure functions over ``model_fn(x_t, t)`` like ``ddim_sample``: N network calls at the steps of a
``spacing`` rule (``rockgen.samplers.spacing``), then a last step onto x_0 where σ = 0. The default,
``quadratic`` (dense at low noise, last network call at σ ≈ 0.05), was chosen by measurement on a trained decoder;
``logsnr`` (uniform in λ from t = T−1 to t = 0) is DPM-Solver's. The spacing matters: on DDIM's kept steps
(``spacing="ddim"``) the step 100 → 0 of a 10-step linear-schedule grid spans h ≈ 3.5 in λ after steps of ≈ 0.75,
and the second-order update extrapolates x̂_0 linearly in λ across it (by h/(2 h_prev) ≈ 2.4× the last difference)
while x̂_0(λ) levels off: that one step made both solvers worse than DDIM (analytic model: RMSE to the exact
ODE solution 0.013 → 0.19 on that step alone, DDIM 0.13). With
α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), λ_t = log(α_t/σ_t), h = λ_s − λ_t for a step t → s and x̂_0 the network's data
prediction (clamped with ``clip_x0``):

* DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2, midpoint form as diffusers):
  x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D,  D = x̂_0(t) + (x̂_0(t) − x̂_0(t_prev)) / (2 r),  r = h_prev/h;
  the first step (no history) and the last step (to σ = 0) are first order (= DDIM).
* DPM-Solver++(3M) (same paper, third-order multistep as diffusers' ``solver_order=3``): with r₀, r₁ the two
  previous λ-steps over h, D₁ = D₁,₀ + r₀/(r₀+r₁)(D₁,₀ − D₁,₁), D₂ = (D₁,₀ − D₁,₁)/(r₀+r₁), D₁,ₖ the divided
  x̂_0 differences: x_s = (σ_s/σ_t) x_t − α_s(e^{−h}−1) x̂_0 + α_s((e^{−h}−1)/h + 1) D₁ − α_s((e^{−h}−1+h)/h² − ½) D₂.
* UniPC (Zhao et al. 2023, "UniPC", Alg. 1 with B(h) = e^{−h} − 1, "bh2"): the UniP-2 predictor above with
  ρ = ½ on D₁ = (x̂_0(t_prev) − x̂_0(t))/r, and the UniC corrector, which re-does the previous step once the
  network has been evaluated at its result — using that evaluation, so it costs no extra network call.

Orders, warm-up and final-step rules follow diffusers' ``DPMSolverMultistepScheduler`` /
``UniPCMultistepScheduler`` (solver_order=2, lower_order_final, final_sigmas_type="zero"), which the tests
use as the oracle. DDIM stays the inversion path (``ddim_invert``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from tqdm.auto import tqdm

from rockgen.diffusion.schedules import Schedule
from rockgen.samplers.ddim import ModelFn, _abar_at, _predict, check_resume
from rockgen.samplers.spacing import solver_timesteps


def _grid(schedule: Schedule, num_steps: int, spacing: str) -> tuple[list[int], list[float]]:
    """Solver steps descending (N,) and their ᾱ with a final 1.0 (x_0) appended (N + 1,)."""
    ts = solver_timesteps(schedule, num_steps, spacing)
    return ts, [_abar_at(schedule, t) for t in ts] + [1.0]


def _lam(abar: float) -> float:
    """λ = log(α/σ) = ½ log(ᾱ/(1−ᾱ)); +∞ at ᾱ = 1 (x_0)."""
    return math.inf if abar >= 1.0 else 0.5 * math.log(abar / (1.0 - abar))


def _first_order(x: torch.Tensor, x0: torch.Tensor, a_t: float, a_s: float) -> tuple[torch.Tensor, float]:
    """(σ_s/σ_t) x_t − α_s (e^{−h} − 1) x̂_0 and h; to σ_s = 0 this is x̂_0 itself."""
    if a_s >= 1.0:
        return x0, math.inf
    h = _lam(a_s) - _lam(a_t)
    return ((1 - a_s) / (1 - a_t)) ** 0.5 * x - a_s**0.5 * math.expm1(-h) * x0, h


def dpmpp_2m_sample(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, num_steps: int, **kw) -> torch.Tensor:
    """DPM-Solver++(2M) from x_T (B, ...) at the first step of ``spacing`` down to x_0 (B, ...); N network calls."""
    return _dpmpp_sample(model_fn, x, schedule, num_steps, order=2, name="dpmpp_2m", **kw)


def dpmpp_3m_sample(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, num_steps: int, **kw) -> torch.Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022, §B, third-order multistep): like 2M, one more x̂_0 of history."""
    return _dpmpp_sample(model_fn, x, schedule, num_steps, order=3, name="dpmpp_3m", **kw)


def _dpmpp_update(x, x0s, lams, a_t, a_s, order):
    """One DPM-Solver++ step t → s of the given order from x̂_0 history ``x0s`` (newest last) at λ ``lams``."""
    base, h = _first_order(x, x0s[-1], a_t, a_s)
    if order == 1:
        return base
    alpha_s = a_s**0.5
    m0, m1 = x0s[-1], x0s[-2]
    r0 = (lams[-1] - lams[-2]) / h
    if order == 2:  # midpoint form: D = x̂_0 + (x̂_0 − x̂_0,prev)/(2 r0)
        return base - alpha_s * math.expm1(-h) * (m0 - m1) / (2.0 * r0)
    r1 = (lams[-2] - lams[-3]) / h
    d1_0, d1_1 = (m0 - m1) / r0, (m1 - x0s[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    e = math.expm1(-h)
    return base + alpha_s * (e / h + 1.0) * d1 - alpha_s * ((e + h) / h**2 - 0.5) * d2


@torch.no_grad()
def _dpmpp_sample(
    model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, num_steps: int, *, order: int, name: str, **options
) -> torch.Tensor:
    """DPM-Solver++ of ``order`` (2 or 3) with diffusers' warm-up and final-step rules (lower_order_final).

    ``options``: :class:`SolverOptions`; ``callback(i, x, x̂_0)`` after each step, i counting down N−1 … 0 like
    ``ddim_sample``; ``on_state`` / ``resume``: the solver state (x and the x̂_0 history) after each step, to
    continue exactly (as DDIM's).
    """
    opt = _solver_options(options, name)
    ts, abar = _grid(schedule, num_steps, opt.spacing)
    n, start = len(ts), 0
    x0s: list[torch.Tensor] = []
    lams: list[float] = []
    if opt.resume is not None:
        st = check_resume(opt.resume, name, x)
        x, start, x0s, lams = st["x"], int(st["next"]), st["x0s"], list(st["lams"])
    for i in tqdm(range(start, n), total=n, initial=start, desc=f"DPM-Solver++({order}M)", disable=not opt.progress,
                  leave=False):  # fmt: skip
        a_t, a_s = abar[i], abar[i + 1]
        _, x0 = _predict(model_fn, x, ts[i], a_t, opt.prediction, opt.clip_x0)
        x0s, lams = (x0s + [x0])[-order:], (lams + [_lam(a_t)])[-order:]
        # warm-up from first order; the step onto σ = 0 is first order, the one before it at most second order
        # for short runs (diffusers: final_sigmas_type="zero", lower_order_final with N < 15)
        step_order = min(order, i + 1)
        if a_s >= 1.0:
            step_order = 1
        elif i == n - 2 and n < 15:
            step_order = min(step_order, 2)
        x = _dpmpp_update(x, x0s, lams, a_t, a_s, step_order)
        if opt.on_state is not None:
            opt.on_state({"sampler": name, "next": i + 1, "x": x, "x0s": list(x0s), "lams": list(lams)})
        if opt.callback is not None:
            opt.callback(n - 1 - i, x, x0)
    return x


def _unic_rhos(h: float, rk: float | None) -> tuple[float, ...]:
    """UniC coefficients ρ for order 1 (rk None: ρ = ½) or order 2 (solve R ρ = b, bh2), as diffusers."""
    if rk is None:
        return (0.5,)
    hh = -h
    b_h = math.expm1(hh)
    phi = math.expm1(hh) / hh - 1
    b1 = phi / b_h
    phi = phi / hh - 0.5
    b2 = phi * 2 / b_h
    R = torch.tensor([[1.0, 1.0], [rk, 1.0]], dtype=torch.float64)
    rho = torch.linalg.solve(R, torch.tensor([b1, b2], dtype=torch.float64))
    return float(rho[0]), float(rho[1])


@torch.no_grad()
def unipc_sample(model_fn: ModelFn, x: torch.Tensor, schedule: Schedule, num_steps: int, **options) -> torch.Tensor:
    """UniPC-bh2 (predictor UniP-2 + corrector UniC) from x_T (B, ...) to x_0 (B, ...); N network calls.

    ``options`` as :func:`dpmpp_2m_sample` (the saved state adds the corrector's inputs).
    """
    opt = _solver_options(options, "unipc")
    ts, abar = _grid(schedule, num_steps, opt.spacing)
    lam = [_lam(a) for a in abar]
    n, start = len(ts), 0
    hist: list[torch.Tensor] = []  # x̂_0 at the kept steps visited so far (last two used)
    x_last, order_last = None, 0
    if opt.resume is not None:
        st = check_resume(opt.resume, "unipc", x)
        x, start, hist, order_last = st["x"], int(st["next"]), st["hist"], int(st["order_last"])
        x_last = st["x_last"]
    for i in tqdm(range(start, n), total=n, initial=start, desc="UniPC", disable=not opt.progress, leave=False):
        _, x0 = _predict(model_fn, x, ts[i], abar[i], opt.prediction, opt.clip_x0)
        if x_last is not None:
            # UniC: redo step i−1 → i from x_last with the new evaluation x̂_0(t_i) (no extra network call).
            h = lam[i] - lam[i - 1]
            rk = (lam[i - 2] - lam[i - 1]) / h if order_last == 2 else None
            rho = _unic_rhos(h, rk)
            m0 = hist[-1]
            base, _ = _first_order(x_last, m0, abar[i - 1], abar[i])
            corr = rho[-1] * (x0 - m0)
            if rk is not None:
                corr = corr + rho[0] * (hist[-2] - m0) / rk
            x = base - abar[i] ** 0.5 * math.expm1(-h) * corr
        hist = (hist + [x0])[-2:]
        order = min(2, n - i, i + 1)  # warm-up from first order; lower order on the final step
        x_last, order_last = x, order
        if order == 1 or abar[i + 1] >= 1.0:
            x, _ = _first_order(x, x0, abar[i], abar[i + 1])
        else:
            h = lam[i + 1] - lam[i]
            rk = (lam[i - 1] - lam[i]) / h
            base, _ = _first_order(x, x0, abar[i], abar[i + 1])
            x = base - abar[i + 1] ** 0.5 * math.expm1(-h) * 0.5 * (hist[-2] - x0) / rk
        if opt.on_state is not None:
            state = {"sampler": "unipc", "next": i + 1, "x": x, "hist": list(hist), "order_last": order_last}
            opt.on_state({**state, "x_last": x_last})
        if opt.callback is not None:
            opt.callback(n - 1 - i, x, x0)
    return x


@dataclass(frozen=True)
class SolverOptions:
    """The keyword options of the multistep solvers: ``solver(model_fn, x, schedule, num_steps, **options)``.
    ``eta`` (0 only: the solvers are deterministic) and ``generator`` are accepted too, so every sampler takes
    one call."""

    clip_x0: bool = True  # clamp x̂_0 to [-1, 1], as ddim_sample
    prediction: str = "eps"  # what the network outputs: eps | x0 | v
    spacing: str = "quadratic"  # the rule choosing the N steps (rockgen.samplers.spacing)
    progress: bool = False  # a progress bar
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None  # (i, x, x̂_0) after each step
    resume: dict | None = None  # a state from on_state: continue from it
    on_state: Callable[[dict], None] | None = None  # gets the solver state after each step


def _solver_options(options: dict[str, Any], name: str) -> SolverOptions:
    """The options of a solver call, checked: η > 0 is refused (an ODE solver), unknown names are a TypeError."""
    options = dict(options)
    eta = options.pop("eta", 0.0)
    options.pop("generator", None)
    if eta:
        raise ValueError(f"sampler={name} is deterministic (an ODE solver): eta={eta} needs sampler=ddim")
    unknown = sorted(set(options) - {f.name for f in fields(SolverOptions)})
    if unknown:
        raise TypeError(f"{name}: unexpected arguments {unknown}")
    return SolverOptions(**options)
