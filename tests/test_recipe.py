"""Training-recipe knobs that push the DiffAE loss toward high noise: timestep samplers, loss weights, the extra
x̂_0 term and the encoder's own learning rate, each against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch

from rockgen.config import DiffusionConf, OptimConf
from rockgen.diffusion import Schedule, diffusion_loss, q_sample, regression_loss, to_eps_and_x0, training_target
from rockgen.diffusion.weighting import (
    high_start,
    importance_weight,
    loss_weight,
    sample_timesteps_from,
    timestep_pmf,
)

T = 50


def test_power_pmf_is_the_integral_of_its_density():
    # density (k+1) u^k on [0, 1), integrated over each step's interval by the midpoint rule on a fine grid
    for k in (0.0, 1.0, 2.5):
        pmf = timestep_pmf("power", T, power=k)
        fine = 2000
        u = (torch.arange(T * fine, dtype=torch.float64) + 0.5) / (T * fine)
        integral = ((k + 1) * u**k / (T * fine)).reshape(T, fine).sum(1)
        torch.testing.assert_close(pmf, integral, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(timestep_pmf("power", T, power=0.0), timestep_pmf("uniform", T))


def test_high_pmf_counts_the_mixture():
    pmf = timestep_pmf("high", 10, high_fraction=0.5, high_from=0.7)
    # t₀ = 7: half the mass uniform over 10 steps, half over the 3 steps 7, 8, 9
    expected = torch.tensor([0.05] * 7 + [0.05 + 0.5 / 3] * 3, dtype=torch.float64)
    torch.testing.assert_close(pmf, expected)
    assert high_start(1000, 0.7) == 700 and high_start(10, 0.99) == 9


@pytest.mark.parametrize(
    "kind,kwargs", [("uniform", {}), ("power", {"power": 2.0}), ("high", {"high_fraction": 0.5, "high_from": 0.7})]
)
def test_sampled_timesteps_follow_the_pmf_ks(kind, kwargs):
    n = 100_000
    gen = torch.Generator().manual_seed(0)
    t = sample_timesteps_from(kind, n, T, "cpu", gen, **kwargs)
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) < T
    empirical = torch.bincount(t, minlength=T).double().cumsum(0) / n
    ks = (empirical - timestep_pmf(kind, T, **kwargs).cumsum(0)).abs().max().item()
    assert ks < 1.63 / math.sqrt(n) * 1.5  # Kolmogorov-Smirnov, 1 % level (with margin for discreteness)


def test_power_sampler_matches_inverse_cdf_draws():
    # an independent sampler: t = ⌊T u^{1/(k+1)}⌋ has the same law as the pmf's multinomial draws
    n, k = 100_000, 1.0
    u = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    inv = (T * u ** (1 / (k + 1))).floor().long().clamp(max=T - 1)
    mine = sample_timesteps_from("power", n, T, "cpu", torch.Generator().manual_seed(2), power=k)
    cdf = lambda x: torch.bincount(x, minlength=T).double().cumsum(0) / n  # noqa: E731
    assert (cdf(inv) - cdf(mine)).abs().max().item() < 1.63 * math.sqrt(2 / n) * 1.5  # two-sample KS


def test_importance_weights_restore_the_uniform_expectation():
    f = torch.linspace(0.1, 3.0, T, dtype=torch.float64) ** 2  # any per-timestep loss
    for kind, kw in (("power", {"power": 3.0}), ("high", {"high_fraction": 0.8, "high_from": 0.5})):
        pmf = timestep_pmf(kind, T, **kw)
        t = torch.arange(T)
        exact = (pmf * importance_weight(pmf, t).double() * f).sum()
        torch.testing.assert_close(exact, f.mean(), rtol=1e-6, atol=0)


def _x0_space_check(kind: str, prediction: str, w_x0_of_snr, **kw) -> None:
    """weight × the network's own loss == w_x0(SNR) × ‖x̂_0 − x_0‖² for a random output (float64)."""
    sched = Schedule.from_config("linear", 1000)
    gen = torch.Generator().manual_seed(3)
    t = torch.tensor([5, 100, 400, 700, 999])
    x0 = torch.rand(5, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    out = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    x_t = q_sample(sched, x0, t, noise)
    abar = sched.abar(t, x0)
    native = regression_loss("mse", out, training_target(prediction, x0, noise, abar)).double()
    x0_err = (to_eps_and_x0(prediction, out, abar, x_t)[1] - x0).square().flatten(1).mean(1)
    ab = sched.alphas_cumprod[t]
    snr = ab / (1 - ab)
    w = loss_weight(kind, prediction, ab, **kw)
    torch.testing.assert_close(w * native, w_x0_of_snr(snr) * x0_err, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weight_is_min_snr_gamma_in_x0_space(prediction):
    _x0_space_check("min_snr", prediction, lambda s: s.clamp(max=5.0), min_snr_gamma=5.0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_p2_weight_is_choi_et_al_on_the_eps_loss(prediction):
    # P2 (eq. 8): λ_t / (k + SNR)^γ on the ε-loss, and the ε-loss is SNR × the x̂_0 error
    _x0_space_check("p2", prediction, lambda s: s / (1.0 + s) ** 0.5, p2_gamma=0.5, p2_k=1.0)


def test_p2_and_min_snr_closed_forms_for_eps():
    ab = torch.tensor([0.999, 0.5, 0.01], dtype=torch.float64)
    snr = ab / (1 - ab)
    torch.testing.assert_close(loss_weight("p2", "eps", ab, p2_gamma=1.0, p2_k=1.0), 1 / (1 + snr))
    torch.testing.assert_close(loss_weight("min_snr", "eps", ab, min_snr_gamma=5.0), snr.clamp(max=5.0) / snr)
    torch.testing.assert_close(loss_weight("none", "v", ab), torch.ones_like(ab))


def test_bad_settings_name_the_option():
    with pytest.raises(ValueError, match="model.diffusion.timestep_sampler"):
        timestep_pmf("loglinear", T)
    with pytest.raises(ValueError, match="model.diffusion.loss_weighting"):
        loss_weight("snr", "v", torch.tensor([0.5]))
    with pytest.raises(ValueError, match="timestep_high_fraction"):
        timestep_pmf("high", T, high_fraction=1.5)
    with pytest.raises(ValueError, match="timestep_high_from"):
        high_start(T, 1.0)


def _loss_with(net_fn, x0, **conf_kwargs):
    conf = DiffusionConf(prediction="v", **conf_kwargs)
    return diffusion_loss(conf, Schedule.from_config("linear", 1000), net_fn, x0, torch.Generator().manual_seed(4))


def test_default_loss_is_unchanged_uniform_unweighted():
    x0 = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    net = lambda x, t: 0.5 * x  # noqa: E731
    per, out, x_t, abar = _loss_with(net, x0)
    gen = torch.Generator().manual_seed(4)  # the uniform sampler keeps DDPM's randint stream
    t = torch.randint(0, 1000, (6,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    sched = Schedule.from_config("linear", 1000)
    ref = regression_loss("mse", 0.5 * q_sample(sched, x0, t, noise), training_target("v", x0, noise, abar))
    torch.testing.assert_close(per, ref)


def test_x0_term_is_added_only_at_high_t():
    x0 = torch.rand(64, 3, 4, 4, generator=torch.Generator().manual_seed(6)) * 2 - 1
    net = lambda x, t: torch.zeros_like(x)  # noqa: E731  v̂ = 0 → x̂_0 = √ᾱ x_t
    base, _, x_t, abar = _loss_with(net, x0)
    extra, *_ = _loss_with(net, x0, x0_loss_weight=2.0, x0_loss_from=0.7)
    high = abar.flatten() <= Schedule.from_config("linear", 1000).alphas_cumprod[700].float()
    x0_err = (abar.sqrt() * x_t - x0).square().flatten(1).mean(1)
    torch.testing.assert_close(extra, base + 2.0 * high.float() * x0_err)
    assert 0 < int(high.sum()) < 64


def test_encoder_gets_its_own_learning_rate(tmp_path, tiny_overrides):
    from conftest import compose_config

    from rockgen.tasks.train import train

    over = [*tiny_overrides, "trainer.max_steps=1", "model.optim.encoder_lr_scale=5", "model.optim.warmup_steps=0"]
    out = train(compose_config(over, tmp_path))
    module = out["trainer"].lightning_module
    groups = out["trainer"].optimizers[0].param_groups
    lr = module.optim_conf.lr
    assert [g["lr"] for g in groups] == pytest.approx([lr, 5 * lr])
    enc = {id(p) for p in module.model.encoder.parameters()}
    assert {id(p) for p in groups[1]["params"]} == enc
    assert not enc & {id(p) for p in groups[0]["params"]}
    n_all = sum(1 for _ in module.model.encoder.parameters()) + sum(1 for _ in module.model.decoder.parameters())
    assert sum(len(g["params"]) for g in groups) == n_all


def test_optimizer_accepts_param_groups_with_their_own_lr():
    from rockgen.lit.common import build_optimizer

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    opt = build_optimizer([{"params": [a, frozen]}, {"params": [b], "lr": 1.0}], OptimConf(lr=0.1))["optimizer"]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]
    assert opt.param_groups[0]["params"] == [a]  # frozen parameters are left out as before


def test_z_norm_standardises_z_sem_and_keeps_the_official_keys():
    from rockgen.models import EncoderConfig
    from rockgen.models.encoder import SemanticEncoder

    cfg = dict(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
               out_channels=6, num_heads=1)  # fmt: skip
    x = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1
    torch.manual_seed(0)
    plain = SemanticEncoder(EncoderConfig(**cfg))
    torch.manual_seed(0)
    batch = SemanticEncoder(EncoderConfig(**cfg, z_norm="batch")).train()
    torch.manual_seed(0)
    layer = SemanticEncoder(EncoderConfig(**cfg, z_norm="layer"))
    z = plain(x).double()
    # float64 references: (z − mean) / sqrt(var + 1e-5) over the batch (biased var), resp. over the features
    ref_b = (z - z.mean(0)) / (z.var(0, unbiased=False) + 1e-5).sqrt()
    ref_l = (z - z.mean(1, keepdim=True)) / (z.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(batch(x).double(), ref_b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer(x).double(), ref_l, rtol=1e-4, atol=1e-4)
    assert set(plain.state_dict()) == set(layer.state_dict())  # no new weights: official checkpoints still map
    with pytest.raises(ValueError, match="z_norm"):
        SemanticEncoder(EncoderConfig(**cfg, z_norm="group"))


@pytest.mark.parametrize(("warmup", "floor"), [(0, 0.0), (3, 0.0), (4, 0.1)])
def test_cosine_decay_matches_torch_schedulers(warmup, floor):
    from rockgen.lit.common import build_optimizer

    total, lr = 20, 0.5
    conf = OptimConf(lr=lr, warmup_steps=warmup, decay="cosine", min_lr_ratio=floor, fused=False)
    ours = build_optimizer([torch.nn.Parameter(torch.zeros(2))], conf, total_steps=total)
    # the oracle: torch's own linear warm-up then CosineAnnealingLR down to lr·floor at the last step
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=total - warmup, eta_min=lr * floor)
    if warmup:
        warm = torch.optim.lr_scheduler.LinearLR(ref_opt, start_factor=1 / warmup, total_iters=warmup - 1)
        ref = torch.optim.lr_scheduler.SequentialLR(ref_opt, [warm, cos], milestones=[warmup])
    else:
        ref = cos
    opt, sched = ours["optimizer"], ours["lr_scheduler"]["scheduler"]
    seen, expected = [], []
    for _ in range(total + 3):  # and past the end: held at the floor
        seen.append(opt.param_groups[0]["lr"])
        expected.append(ref_opt.param_groups[0]["lr"] if len(expected) <= total else lr * floor)
        opt.step(), sched.step()
        ref_opt.step(), ref.step()
    assert seen == pytest.approx(expected, abs=1e-9)
    assert seen[-1] == pytest.approx(lr * floor) and max(seen) == pytest.approx(lr)


def test_decay_settings_name_the_option():
    from rockgen.lit.common import build_optimizer

    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="model.optim.decay='linear'"):
        build_optimizer(p, OptimConf(decay="linear"), total_steps=10)
    with pytest.raises(ValueError, match="finite trainer.max_steps"):
        build_optimizer(p, OptimConf(decay="cosine"), total_steps=None)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        build_optimizer(p, OptimConf(decay="cosine", min_lr_ratio=2.0), total_steps=10)


def test_cosine_decay_ends_at_the_runs_last_step(tmp_path, tiny_overrides):
    from conftest import compose_config

    from rockgen.tasks.train import train

    over = [*tiny_overrides, "trainer.max_steps=4", "model.optim.decay=cosine", "model.optim.warmup_steps=1",
            "model.optim.min_lr_ratio=0.25"]  # fmt: skip
    out = train(compose_config(over, tmp_path))
    lr = out["trainer"].lightning_module.optim_conf.lr
    assert out["trainer"].optimizers[0].param_groups[0]["lr"] == pytest.approx(0.25 * lr)
