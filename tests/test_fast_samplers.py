"""DPM-Solver++(2M) and UniPC against diffusers' schedulers (full deterministic loop) and a closed form.

The analytic model: data x_0 ~ N(μ, s² I), so x_t ~ N(√ᾱ μ, ᾱ s² + 1 − ᾱ) and the exact ε-prediction is
ε*(x_t) = √(1−ᾱ) (x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ). Its probability-flow ODE keeps (x_t − √ᾱ μ)/√(ᾱ s² + 1 − ᾱ)
constant, which gives the exact x_0 a perfect solver must reach from x_T.
"""

import pytest
import torch

from rockgen.diffusion import Schedule
from rockgen.samplers import ddim_sample, ddim_timesteps, dpmpp_2m_sample, get_sampler, unipc_sample

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


def _diffusers_loop(cls, schedule, x, n, **cfg):
    sched = cls(num_train_timesteps=1000, trained_betas=schedule.betas.numpy(), prediction_type="epsilon", **cfg)
    sched.set_timesteps(n)
    ts = ddim_timesteps(n).flip(0)
    abar = schedule.alphas_cumprod[ts]
    # Our kept steps (DDIM spacing) instead of diffusers' spacing; everything else is diffusers' own state.
    sched.timesteps = ts.clone()
    sched.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=abar.dtype)]).float()
    sched.num_inference_steps = n
    fn = _eps_model(schedule)
    for t in sched.timesteps:
        x = sched.step(fn(x, t.repeat(x.shape[0])), t, x).prev_sample
    return x


@pytest.mark.parametrize("n", [1, 2, 5, 10, 25])
def test_dpmpp_2m_matches_diffusers(n):
    from diffusers import DPMSolverMultistepScheduler

    sch = _schedule()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(n))
    ours = dpmpp_2m_sample(_eps_model(sch), x_T, sch, n, clip_x0=False)
    ref = _diffusers_loop(
        DPMSolverMultistepScheduler, sch, x_T, n, algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
    )  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 25])
def test_unipc_matches_diffusers(n):
    from diffusers import UniPCMultistepScheduler

    sch = _schedule()
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(100 + n))
    ours = unipc_sample(_eps_model(sch), x_T, sch, n, clip_x0=False)
    ref = _diffusers_loop(
        UniPCMultistepScheduler, sch, x_T, n, solver_order=2, solver_type="bh2", predict_x0=True,
        lower_order_final=True, final_sigmas_type="zero",
    )  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def test_fast_solvers_beat_ddim_against_the_exact_ode_solution():
    # Second-order solvers' error falls faster than DDIM's once the steps resolve the schedule (here 200).
    sch = _schedule()
    n = 200
    t_top = int(ddim_timesteps(n)[-1])
    a = float(sch.alphas_cumprod[t_top])
    x_T = torch.randn(8, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = MU + S * (x_T - a**0.5 * MU) / (a * S**2 + 1 - a) ** 0.5
    errs = {
        name: (get_sampler(name)(_eps_model(sch), x_T, sch, n, clip_x0=False) - exact).abs().max().item()
        for name in ("ddim", "dpmpp_2m", "unipc")
    }
    assert errs["dpmpp_2m"] < errs["ddim"] / 3, errs
    assert errs["unipc"] < errs["ddim"] / 3, errs
    assert errs["unipc"] < 1e-2, errs


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc"])
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
    # DDIM keeps η and its generator
    ddim_sample(_eps_model(sch), torch.zeros(1, 2), sch, 3, eta=1.0, generator=torch.Generator().manual_seed(0))
