"""DDIM / inversion / DDPM against float64 references and an analytic ε-model.

For data x_0 ~ N(μ, s²) the optimal ε-predictor is closed-form:
    ε*(x_t, t) = √(1−ᾱ) (x_t − √ᾱ μ) / (ᾱ s² + 1 − ᾱ),
so a correct sampler must return draws with mean μ and std s, and inversion must invert sampling.
"""

import numpy as np
import pytest
import torch

from rockgen.diffusion import Schedule
from rockgen.samplers import ddim_invert, ddim_sample, ddim_step, ddim_timesteps, ddpm_sample

MU, S = 0.3, 0.5


def gaussian_eps_model(schedule):
    abar_all = schedule.alphas_cumprod

    def model_fn(x, t):
        a = abar_all[t].to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S**2 + 1 - a)

    return model_fn


def test_timesteps_any_count_and_official_spacing():
    assert ddim_timesteps(20).tolist() == list(range(0, 1000, 50))
    assert ddim_timesteps(10).tolist() == list(range(0, 1000, 100))
    for n in (7, 300, 999, 1000):
        ts = ddim_timesteps(n)
        assert len(ts) == n and len(set(ts.tolist())) == n and ts.min() == 0 and ts.max() < 1000
    with pytest.raises(ValueError, match="1..1000"):
        ddim_timesteps(0)


def test_ddim_step_matches_float64_reference():
    rng = np.random.default_rng(0)
    eps, x0, z = (rng.standard_normal((2, 3)) for _ in range(3))
    a_t, a_s, eta = 0.3, 0.7, 0.6
    sigma = eta * np.sqrt((1 - a_s) / (1 - a_t)) * np.sqrt(1 - a_t / a_s)
    ref = np.sqrt(a_s) * x0 + np.sqrt(1 - a_s - sigma**2) * eps + sigma * z
    out = ddim_step(*(torch.from_numpy(v) for v in (eps, x0)), a_t, a_s, eta, torch.from_numpy(z))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12)


def test_ddim_loop_matches_independent_float64_loop():
    sched = Schedule.from_config("linear")
    model = gaussian_eps_model(sched)
    x_T = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = ddim_sample(model, x_T, sched, 13, clip_x0=False)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    steps = [i * 1000 // 13 for i in range(13)]
    x = x_T.numpy().copy()
    for i in reversed(range(13)):
        a, a_prev = abar[steps[i]], (abar[steps[i - 1]] if i else 1.0)
        e = np.sqrt(1 - a) * (x - np.sqrt(a) * MU) / (a * S**2 + 1 - a)
        x0 = (x - np.sqrt(1 - a) * e) / np.sqrt(a)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * e
    np.testing.assert_allclose(out.numpy(), x, rtol=1e-10, atol=1e-12)


def test_ddim_samples_have_the_data_moments():
    sched = Schedule.from_config("linear")
    x_T = torch.randn(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0 = ddim_sample(gaussian_eps_model(sched), x_T, sched, 100, clip_x0=False)
    assert x0.mean().item() == pytest.approx(MU, abs=0.02)
    assert x0.std().item() == pytest.approx(S, rel=0.03)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_inversion_then_sampling_round_trip(schedule):
    sched = Schedule.from_config(schedule)
    model = gaussian_eps_model(sched)
    x0 = MU + S * torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    errors = []
    for n in (100, 200, 1000):
        x_T = ddim_invert(model, x0, sched, n, clip_x0=False)
        back = ddim_sample(model, x_T, sched, n, clip_x0=False)
        errors.append((back - x0).abs().mean().item())
    # DDIM inversion is first order: the round-trip error halves when the step count doubles
    assert errors[1] == pytest.approx(errors[0] / 2, rel=0.15)
    assert errors[2] < 2.5e-3
    # the inverted code is noise-like: unit variance at the last kept step
    x_T = ddim_invert(model, x0, sched, 200, clip_x0=False)
    assert x_T.std().item() == pytest.approx(1.0, rel=0.2)


def test_inversion_with_clipping_has_no_nan():
    sched = Schedule.from_config("linear")
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    x_T = ddim_invert(gaussian_eps_model(sched), x0, sched, 10, clip_x0=True)
    assert torch.isfinite(x_T).all()


def test_eta_sampling_is_reproducible_by_generator():
    sched = Schedule.from_config("linear")
    model = gaussian_eps_model(sched)
    x_T = torch.randn(8, 2)
    a = ddim_sample(model, x_T, sched, 10, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = ddim_sample(model, x_T, sched, 10, eta=1.0, generator=torch.Generator().manual_seed(5))
    c = ddim_sample(model, x_T, sched, 10, eta=1.0, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_ddpm_samples_have_the_data_moments():
    sched = Schedule.from_config("linear")
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(20000, dtype=torch.float64, generator=gen)
    x0 = ddpm_sample(gaussian_eps_model(sched), x_T, sched, variance="fixed_small", clip_x0=False, generator=gen)
    assert x0.mean().item() == pytest.approx(MU, abs=0.02)
    assert x0.std().item() == pytest.approx(S, rel=0.05)


def test_ddpm_respaced_is_reproducible_and_finite():
    sched = Schedule.from_config("linear")
    model = gaussian_eps_model(sched)
    x_T = torch.randn(4, 3, 8, 8)
    a = ddpm_sample(model, x_T, sched, 25, generator=torch.Generator().manual_seed(0))
    b = ddpm_sample(model, x_T, sched, 25, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert a.shape == x_T.shape and a.abs().max() <= 1.0  # the last step returns the clipped x̂_0
