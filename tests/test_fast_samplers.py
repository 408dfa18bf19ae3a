"""DPM-Solver++(2M) and UniPC against diffusers' schedulers (full deterministic loop) and a closed form.

The analytic model: data x_0 ~ N(μ, s² I), so x_t ~ N(√ᾱ μ, ᾱ s² + 1 − ᾱ) and the exact ε-prediction is
ε*(x_t) = √(1−ᾱ) (x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ). Its probability-flow ODE keeps (x_t − √ᾱ μ)/√(ᾱ s² + 1 − ᾱ)
constant, which gives the exact x_0 a perfect solver must reach from x_T.
"""

import numpy as np
import pytest
import torch

from rockgen.diffusion import Schedule
from rockgen.samplers import (
    SPACINGS,
    ddim_sample,
    ddim_timesteps,
    dpmpp_2m_sample,
    dpmpp_3m_sample,
    get_sampler,
    solver_timesteps,
    unipc_sample,
)

MU, S = 0.3, 0.5


def _schedule():
    return Schedule.from_config("linear", 1000)


def _eps_model(schedule, prediction="eps"):
    abar_all = schedule.alphas_cumprod

    def fn(x, t):
        a = abar_all[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S**2 + 1 - a)
        if prediction == "v":
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            return a.sqrt() * eps - (1 - a).sqrt() * x0
        return eps

    return fn


def _diffusers_loop(cls, schedule, x, n, ts=None, **cfg):
    """diffusers' full loop; with ``ts`` (descending) on those integer steps with σ at exactly those steps."""
    sched = cls(num_train_timesteps=1000, trained_betas=schedule.betas.numpy(), prediction_type="epsilon", **cfg)
    sched.set_timesteps(n)
    if ts is not None:
        ts = torch.as_tensor(ts)
        abar = schedule.alphas_cumprod[ts]
        sched.timesteps = ts.clone()
        sched.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=abar.dtype)]).float()
        sched.num_inference_steps = len(ts)
    fn = _eps_model(schedule)
    for t in sched.timesteps:
        x = sched.step(fn(x, t.repeat(x.shape[0])), t, x).prev_sample
    return x


DPM_CFG = dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True)
UNI_CFG = dict(solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True)
# diffusers' switch for each of our spacings (``ddim`` has none: DiffAE's kept steps)
DIFFUSERS_SPACING = {
    "trailing": {"timestep_spacing": "trailing"},
    "linspace": {"timestep_spacing": "linspace"},
    "logsnr": {"use_lu_lambdas": True},
    "karras": {"use_karras_sigmas": True},
}


@pytest.mark.parametrize("n", [1, 2, 5, 10, 25])
def test_dpmpp_2m_matches_diffusers(n):
    from diffusers import DPMSolverMultistepScheduler

    sch = _schedule()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(n))
    ours = dpmpp_2m_sample(_eps_model(sch), x_T, sch, n, clip_x0=False, spacing="ddim")
    ts = ddim_timesteps(n).flip(0)
    ref = _diffusers_loop(DPMSolverMultistepScheduler, sch, x_T, n, ts, final_sigmas_type="zero", **DPM_CFG)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 10, 14, 15, 25])
def test_dpmpp_3m_matches_diffusers(n):
    # warm-up orders 1, 2, 3; below 15 steps the last two steps drop to second and first order (lower_order_final)
    from diffusers import DPMSolverMultistepScheduler

    sch = _schedule()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(50 + n))
    for spacing in ("ddim", "logsnr", "quadratic"):
        ours = dpmpp_3m_sample(_eps_model(sch), x_T, sch, n, clip_x0=False, spacing=spacing)
        ts = ddim_timesteps(n).flip(0) if spacing == "ddim" else solver_timesteps(sch, n, spacing)
        cfg = {**DPM_CFG, "solver_order": 3}
        ref = _diffusers_loop(DPMSolverMultistepScheduler, sch, x_T, n, ts, final_sigmas_type="zero", **cfg)
        torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 25])
def test_unipc_matches_diffusers(n):
    from diffusers import UniPCMultistepScheduler

    sch = _schedule()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(100 + n))
    ours = unipc_sample(_eps_model(sch), x_T, sch, n, clip_x0=False, spacing="ddim")
    ts = ddim_timesteps(n).flip(0)
    ref = _diffusers_loop(UniPCMultistepScheduler, sch, x_T, n, ts, final_sigmas_type="zero", **UNI_CFG)
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("spacing", sorted(DIFFUSERS_SPACING))
@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 50, 200])
def test_spacing_matches_diffusers_timesteps(spacing, n):
    from diffusers import DPMSolverMultistepScheduler

    sch = _schedule()
    d = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=sch.betas.numpy(), **DIFFUSERS_SPACING[spacing]
    )
    d.set_timesteps(n)
    theirs = sorted(set(d.timesteps.tolist()), reverse=True)  # diffusers repeats a step where rounding merges two
    ours = solver_timesteps(sch, n, spacing)
    assert len(ours) == len(theirs) and ours[0] == 999
    if spacing in ("logsnr", "karras"):
        # diffusers inverts σ(t) from float32 ᾱ: a step that falls within float32 noise of a .5 rounds the other way
        diff = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
        assert max(diff) <= 1 and sum(d > 0 for d in diff) <= 1
    else:
        assert ours == theirs


@pytest.mark.parametrize("kind", ["linear", "cosine", "const"])
def test_quadratic_spacing_closed_form(kind):
    # t_e from ᾱ accumulated in float64 from the betas (not Schedule's table), then t_e + (T−1−t_e)(1 − i/(N−1))²
    import math

    from rockgen.samplers.spacing import QUADRATIC_END_SIGMA

    sch = Schedule.from_config(kind, 1000, **({"const": 0.008} if kind == "const" else {}))
    abar, t_end = 1.0, 0
    for t, beta in enumerate(sch.betas.double().tolist()):
        abar *= 1.0 - beta
        if math.sqrt(1.0 - abar) <= QUADRATIC_END_SIGMA:
            t_end = t
    if kind != "cosine":  # the image decoders' schedule ends at t = 10; the latent DDIM's (σ_0 ≈ 0.09) at 0
        assert t_end == {"linear": 10, "const": 0}[kind]
    for n in (2, 5, 10, 20):
        want = sorted({round(t_end + (999 - t_end) * (1 - i / (n - 1)) ** 2) for i in range(n)}, reverse=True)
        assert solver_timesteps(sch, n, "quadratic") == want
    assert solver_timesteps(sch, 1, "quadratic") == [999]
    # a square law: √((t − t_e)/(999 − t_e)) falls in equal steps (to rounding)
    root = np.sqrt((np.array(solver_timesteps(sch, 10, "quadratic")) - t_end) / (999 - t_end))
    np.testing.assert_allclose(np.diff(root), -1 / 9, atol=0.02)


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
@pytest.mark.parametrize("n", [3, 10])
def test_loops_match_diffusers_on_its_own_spacing(spacing, n):
    # diffusers' σ at these integer steps is exactly ours: its unpatched set_timesteps is the oracle here
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    sch = _schedule()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7 + n))
    cfg = {**DIFFUSERS_SPACING[spacing], "final_sigmas_type": "zero"}
    for ours_fn, cls, sol in (
        (dpmpp_2m_sample, DPMSolverMultistepScheduler, DPM_CFG),
        (unipc_sample, UniPCMultistepScheduler, UNI_CFG),
    ):
        ours = ours_fn(_eps_model(sch), x_T, sch, n, clip_x0=False, spacing=spacing)
        torch.testing.assert_close(ours, _diffusers_loop(cls, sch, x_T, n, **sol, **cfg), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_loops_match_diffusers_on_snapped_sigma_spacings(spacing):
    # diffusers keeps the continuous σ of these rules but calls the network at rounded t; we use ᾱ at the rounded t
    # (where the network was trained), so the oracle runs on our steps with σ taken at them
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    sch = _schedule()
    n = 10
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    ts = solver_timesteps(sch, n, spacing)
    for ours_fn, cls, sol in (
        (dpmpp_2m_sample, DPMSolverMultistepScheduler, DPM_CFG),
        (unipc_sample, UniPCMultistepScheduler, UNI_CFG),
    ):
        ours = ours_fn(_eps_model(sch), x_T, sch, n, clip_x0=False, spacing=spacing)
        ref = _diffusers_loop(cls, sch, x_T, n, ts, final_sigmas_type="zero", **sol)
        torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def _errors_to_exact(n, **kw):
    """RMSE of each sampler's n-step x_0 to the exact ODE solution from x_T at that sampler's first step."""
    sch = _schedule()
    x_T = torch.randn(8, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errs = {}
    for name in ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc"):
        t_top = (
            int(ddim_timesteps(n)[-1]) if name == "ddim" else solver_timesteps(sch, n, kw.get("spacing", "logsnr"))[0]
        )
        a = float(sch.alphas_cumprod[t_top])
        exact = MU + S * (x_T - a**0.5 * MU) / (a * S**2 + 1 - a) ** 0.5
        out = get_sampler(name)(_eps_model(sch), x_T, sch, n, clip_x0=False, **({} if name == "ddim" else kw))
        errs[name] = (out - exact).square().mean().sqrt().item()
    return errs


@pytest.mark.parametrize("n", [10, 20, 200])
def test_fast_solvers_beat_ddim_against_the_exact_ode_solution(n):
    # With the default (uniform-λ) steps the second-order solvers are several times closer than DDIM at equal
    # network calls, also at 10 steps (7.8× / 5×) where they were worse than DDIM on DDIM's kept steps.
    errs = _errors_to_exact(n)
    assert errs["dpmpp_2m"] < errs["ddim"] / 3, errs
    assert errs["unipc"] < errs["ddim"] / 3, errs
    # third order pays off from 15 steps on (20: 0.0040 vs 2M's 0.0073); at 10 its extrapolation over the widest
    # λ-steps lands 0.067 from the exact solution (2M: 0.016), still ahead of DDIM (0.126)
    assert errs["dpmpp_3m"] < errs["ddim"] / (1.5 if n == 10 else 3), errs
    if n == 20:  # (at 200 both sit at float rounding of the integer-step grid)
        assert errs["dpmpp_3m"] < errs["dpmpp_2m"], errs


def test_ddim_kept_steps_break_second_order_at_10_steps():
    # The cause of the first measured table: on DDIM's grid (… 200, 100, 0) the last λ-step is 4.7× the previous
    # one and the multistep extrapolation across it lands further from the ODE solution than DDIM itself.
    errs = _errors_to_exact(10, spacing="ddim")
    assert errs["dpmpp_2m"] > errs["ddim"] and errs["unipc"] > errs["ddim"], errs


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m", "unipc"])
def test_v_prediction_gives_the_same_trajectory(name):
    sch = _schedule()
    x_T = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f = get_sampler(name)
    a = f(_eps_model(sch), x_T, sch, 7, clip_x0=True)
    b = f(_eps_model(sch, "v"), x_T, sch, 7, clip_x0=True, prediction="v")
    torch.testing.assert_close(a, b)


def test_bad_sampler_settings():
    sch = _schedule()
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        get_sampler("euler")
    with pytest.raises(ValueError, match="deterministic"):
        dpmpp_2m_sample(_eps_model(sch), torch.zeros(1, 2), sch, 5, eta=0.5)
    with pytest.raises(ValueError, match="DDIM steps must be in 1..1000"):
        unipc_sample(_eps_model(sch), torch.zeros(1, 2), sch, 0)
    with pytest.raises(ValueError, match="unknown timestep spacing 'uniform'.*spacing="):
        dpmpp_2m_sample(_eps_model(sch), torch.zeros(1, 2), sch, 5, spacing="uniform")
    for spacing in SPACINGS:  # every rule: descending unique training steps, N of them while rounding merges none
        for n in (1, 7, 10, 1000):
            ts = solver_timesteps(sch, n, spacing)
            assert ts == sorted(set(ts), reverse=True) and 0 <= ts[-1] and ts[0] <= 999
            assert len(ts) == n or (n == 1000 and spacing in ("linspace", "logsnr", "karras", "quadratic"))
    # DDIM keeps η and its generator
    ddim_sample(_eps_model(sch), torch.zeros(1, 2), sch, 3, eta=1.0, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc"])
@pytest.mark.parametrize("stop_after", [1, 2, 5])
def test_resume_from_any_step_gives_the_uninterrupted_result(name, stop_after):
    # what task=mosaic relies on: the state saved after step k restarts the loop to exactly the same x_0
    sch = _schedule()
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(11))
    f = get_sampler(name)
    states = []
    full = f(_eps_model(sch), x_T, sch, 8, on_state=states.append)
    assert len(states) == 8 and all(s["sampler"] == name for s in states)
    resumed = f(_eps_model(sch), torch.zeros_like(x_T), sch, 8, resume=states[stop_after - 1])
    assert torch.equal(resumed, full)


def test_resume_refuses_a_foreign_state():
    sch = _schedule()
    x_T = torch.randn(1, 3, 4, 4)
    states = []
    dpmpp_2m_sample(_eps_model(sch), x_T, sch, 4, on_state=states.append)
    with pytest.raises(ValueError, match="sampler=unipc from a state of sampler=dpmpp_2m"):
        unipc_sample(_eps_model(sch), x_T, sch, 4, resume=states[0])
    with pytest.raises(ValueError, match="saved state is"):
        dpmpp_2m_sample(_eps_model(sch), torch.zeros(2, 3, 4, 4), sch, 4, resume=states[0])
    with pytest.raises(ValueError, match="resumable DDIM needs eta=0"):
        ddim_sample(_eps_model(sch), x_T, sch, 4, eta=1.0, on_state=states.append)
