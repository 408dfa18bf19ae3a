"""Schedules and the forward process against closed forms computed independently in float64."""

import math

import numpy as np
import pytest
import torch

from rockgen.diffusion import (
    Schedule,
    make_betas,
    q_sample,
    regression_loss,
    to_eps_and_x0,
    training_target,
    x0_from_eps,
)


def test_linear_schedule_endpoints_and_cumprod():
    betas = make_betas("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    ref = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(Schedule(betas).alphas_cumprod.numpy(), ref, rtol=1e-12)


def test_cosine_schedule_matches_closed_form_abar():
    sched = Schedule.from_config("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):  # unclipped region: ᾱ_t = f(t+1)/f(0)
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert make_betas("cosine", 1000).max().item() <= 0.999


def test_const_schedule_for_latents():
    sched = Schedule.from_config("const", 1000, const=0.008)
    assert sched.alphas_cumprod[-1].item() == pytest.approx(0.992**1000, rel=1e-9)
    assert sched.alphas_cumprod[-1].item() == pytest.approx(3.3e-4, rel=0.03)


def test_bad_schedule_names_setting():
    with pytest.raises(ValueError, match="diffusion.schedule"):
        make_betas("quadratic")


def test_q_sample_closed_form_and_x0_round_trip():
    sched = Schedule.from_config("linear")
    x0 = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 500, 999])
    xt = q_sample(sched, x0, t, eps)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t.numpy()]
    ref = np.sqrt(abar)[:, None, None, None] * x0.numpy() + np.sqrt(1 - abar)[:, None, None, None] * eps.numpy()
    np.testing.assert_allclose(xt.numpy(), ref, rtol=1e-12)
    a = sched.abar(t, x0)
    torch.testing.assert_close(x0_from_eps(a, xt, eps), x0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterisations_recover_eps_and_x0(prediction):
    sched = Schedule.from_config("linear")
    x0 = torch.randn(3, 5, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([1, 400, 998])
    a = sched.abar(t, x0)
    xt = q_sample(sched, x0, t, eps)
    out = training_target(prediction, x0, eps, a)  # a perfect network
    eps_hat, x0_hat = to_eps_and_x0(prediction, out, a, xt)
    torch.testing.assert_close(eps_hat, eps)
    torch.testing.assert_close(x0_hat, x0)


def test_regression_loss_is_per_sample_mean():
    pred = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    target = torch.zeros(2, 2)
    torch.testing.assert_close(regression_loss("mse", pred, target), torch.tensor([5.0, 0.0]))
    torch.testing.assert_close(regression_loss("l1", pred, target), torch.tensor([2.0, 0.0]))
