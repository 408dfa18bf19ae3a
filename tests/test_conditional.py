"""Class-conditional latent DDIM with classifier-free guidance: the guidance maths against closed forms, the
conditional MLP, label handling and bad input, and the trained pipeline (sample(cls=, guidance=), generate)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_config

from rockgen.conditioning import (
    class_index_of_codes,
    code_labels_strict,
    drop_labels,
    requested_classes,
    resolve_classes,
)
from rockgen.diffusion import Schedule
from rockgen.models import LatentMLPConfig, MLPSkipNet
from rockgen.samplers import cfg_combine, ddim_sample, guided_model_fn

# ------------------------------------------------------------------ guidance against closed forms


def gaussian_eps(x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, s: float, schedule: Schedule) -> torch.Tensor:
    """Exact ε-predictor E[ε | x_t] for data x0 ~ N(mu, s² I): √(1−ᾱ)(x_t − √ᾱ mu) / (ᾱ s² + 1 − ᾱ)."""
    a = schedule.alphas_cumprod.to(x.dtype)[t].reshape(-1, 1)
    return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)


def class_gaussians(schedule, mus, s):
    """model_fn(x, t, cls) of per-class Gaussians N(mus[c], s²); the last row of mus is the null class."""
    return lambda x, t, c: gaussian_eps(x, t, mus[c], s, schedule)


def test_cfg_combination_matches_the_closed_form_and_calls_the_net_once():
    schedule = Schedule.from_config("linear", 1000)
    mus = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    calls = []
    base = class_gaussians(schedule, mus, 0.5)

    def net(x, t, c):
        calls.append(x.shape[0])
        return base(x, t, c)

    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.full((6,), 400)
    cls = torch.zeros(6, dtype=torch.long)
    e_c, e_u = gaussian_eps(x, t, mus[0], 0.5, schedule), gaussian_eps(x, t, mus[1], 0.5, schedule)
    for w in (0.0, 1.0, 2.0, 4.0, 0.3):
        calls.clear()
        out = guided_model_fn(net, cls, null_class=1, guidance=w)(x, t)
        torch.testing.assert_close(out, e_u + w * (e_c - e_u), rtol=1e-12, atol=1e-12)
        assert calls == ([6] if w in (0.0, 1.0) else [12])  # one forward per step; both branches in one batch
    torch.testing.assert_close(cfg_combine(e_c, e_u, 3.0), 3 * e_c - 2 * e_u)


def test_guided_ddim_on_gaussians_lands_on_the_guided_mean():
    """For N(mu_c, s²) vs the null N(0, s²) the guided score is that of N(w·mu_c, s²): DDIM must land there."""
    torch.manual_seed(0)
    schedule = Schedule.from_config("linear", 1000)
    mus = torch.tensor([[0.8, -0.4], [0.0, 0.0]], dtype=torch.float64)
    net = class_gaussians(schedule, mus, 0.3)
    noise = torch.randn(4000, 2, dtype=torch.float64)
    cls = torch.zeros(4000, dtype=torch.long)
    for w in (0.0, 1.0, 2.0):
        x0 = ddim_sample(guided_model_fn(net, cls, 1, w), noise, schedule, 50, clip_x0=False)
        torch.testing.assert_close(x0.mean(0), w * mus[0], atol=0.02, rtol=0)
        assert abs(float(x0.std(0).mean()) - 0.3) < 0.03


def test_guidance_rejects_negative_or_nan():
    net = class_gaussians(Schedule.from_config("linear", 1000), torch.zeros(2, 2), 1.0)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="guidance"):
            guided_model_fn(net, torch.zeros(1, dtype=torch.long), 1, bad)


# ------------------------------------------------------------------ the conditional latent MLP


def test_unconditional_mlp_is_unchanged_and_refuses_classes():
    torch.manual_seed(0)
    plain = MLPSkipNet(LatentMLPConfig(num_channels=8, hidden_channels=16, num_layers=3))
    assert not any(k.startswith(("class_embed", "zoom_embed")) for k in plain.state_dict())
    with pytest.raises(ValueError, match="unconditional"):
        plain(torch.zeros(2, 8), torch.zeros(2, dtype=torch.long), cls=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="zoom"):
        plain(torch.zeros(2, 8), torch.zeros(2, dtype=torch.long), zoom=torch.zeros(2))


def test_conditional_mlp_uses_class_and_zoom_and_defaults_to_the_null_token():
    torch.manual_seed(0)
    net = MLPSkipNet(LatentMLPConfig(num_channels=8, hidden_channels=16, num_layers=3, num_classes=3, zoom_embed=True))
    assert net.null_class == 3
    x, t = torch.randn(4, 8), torch.full((4,), 10)
    null = net(x, t, cls=torch.full((4,), 3))
    torch.testing.assert_close(net(x, t), null)
    assert not torch.allclose(net(x, t, cls=torch.zeros(4, dtype=torch.long)), null)
    assert not torch.allclose(net(x, t, zoom=torch.full((4,), 1.0)), null)
    # the unconditional rows keep the official network's per-row computation: a row does not see the others
    mixed = net(x, t, cls=torch.tensor([0, 3, 1, 3]))
    torch.testing.assert_close(mixed[1], null[1])


def test_label_dropout_rate():
    gen = torch.Generator().manual_seed(0)
    out = drop_labels(torch.zeros(20000, dtype=torch.long), null_class=5, p=0.1, generator=gen)
    assert set(out.unique().tolist()) == {0, 5}
    assert abs(float((out == 5).float().mean()) - 0.1) < 0.01
    assert drop_labels(torch.ones(3, dtype=torch.long), 5, 0.0).tolist() == [1, 1, 1]


# ------------------------------------------------------------------ labels and bad input


def test_requested_classes_and_errors():
    classes = ["cobbles", "layered"]
    assert requested_classes("layered", 3, classes).tolist() == [1, 1, 1]
    assert requested_classes(["layered", "cobbles"], 2, classes).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"unknown class 'basalt'.*cobbles.*layered"):
        requested_classes("basalt", 2, classes)
    with pytest.raises(ValueError, match="unconditional"):
        requested_classes("layered", 2, None)
    with pytest.raises(ValueError, match="one class or 3"):
        requested_classes(["layered", "cobbles"], 3, classes)


def test_resolve_classes_and_codes():
    labels = ["b", "a", None, "b"]
    assert resolve_classes(labels, "auto", "x") == ["a", "b"]
    assert class_index_of_codes(labels, ["a", "b"], "x").tolist() == [1, 0, 2, 1]
    with pytest.raises(ValueError, match=r"\['c'\] have no training images"):
        resolve_classes(labels, ["a", "c"], "model.latent.classes")
    with pytest.raises(ValueError, match="no code has a label"):
        resolve_classes([None, None], "auto", "model.latent.classes")
    with pytest.raises(ValueError, match=r"labels \['b'\]"):
        class_index_of_codes(labels, ["a"], "x")


def test_labels_csv_with_paths_outside_the_data_is_an_error(tmp_path):
    paths = [str(tmp_path / "data" / "x" / "a.png"), str(tmp_path / "data" / "y" / "b.png")]
    good = tmp_path / "good.csv"
    good.write_text("path,label\nx/a.png,sand\ny/b.png,clay\n")
    assert code_labels_strict(paths, ["x", "y"], str(good)) == ["sand", "clay"]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx/a.png,sand\n/elsewhere/c.png,clay\n")
    with pytest.raises(ValueError, match=r"bad.csv: 1 of its 2 paths are not images of the data.*elsewhere"):
        code_labels_strict(paths, ["x", "y"], str(bad))
    assert code_labels_strict(paths, ["x", ""], None) == ["x", None]


# ------------------------------------------------------------------ trained tiny pipeline


@pytest.fixture(scope="module")
def cond_pipeline(tmp_path_factory):
    """Tiny autoencoder → latents → class-conditional latent DDIM (3 steps)."""
    from test_latent import latent_overrides

    from rockgen.tasks.infer_latents import infer_latents
    from rockgen.tasks.train import train

    root = tmp_path_factory.mktemp("cond")
    train(compose_config(TINY, root / "ae"))
    ae = root / "ae" / "checkpoints" / "last.ckpt"
    inf = infer_latents(compose_config(["task=infer_latents", f"ckpt_path={ae}", *TINY], root / "latents"))
    over = [*latent_overrides(ae, inf["latents_path"]), "model.latent.classes=auto"]
    train(compose_config(over, root / "latent"))
    train(compose_config(latent_overrides(ae, inf["latents_path"]), root / "uncond"))
    return {
        "ae": ae,
        "latents": inf["latents_path"],
        "latent": root / "latent" / "checkpoints" / "last.ckpt",
        "uncond": root / "uncond" / "checkpoints" / "last.ckpt",
        "root": root,
    }


@pytest.mark.slow
def test_conditional_checkpoint_samples_each_class(cond_pipeline):
    from rockgen.lit.diffae import LitModel

    model = LitModel.load_from_checkpoint(cond_pipeline["latent"], map_location="cpu", weights_only=True)
    assert model.classes == ["cobbles", "fractured", "granite", "gravel", "layered"]
    a = model.sample(2, "cpu", T=2, T_latent=3, seed=1, cls="layered", guidance=2)
    b = model.sample(2, "cpu", T=2, T_latent=3, seed=1, cls="layered", guidance=2)
    c = model.sample(2, "cpu", T=2, T_latent=3, seed=1, cls="cobbles", guidance=2)
    assert a.shape == (2, 3, 32, 32)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # no class = the unconditional branch = guidance 0 for any class
    z_u = model.sample_latents(2, "cpu", 3, generator=torch.Generator().manual_seed(0))
    z_0 = model.sample_latents(2, "cpu", 3, generator=torch.Generator().manual_seed(0), cls="layered", guidance=0)
    torch.testing.assert_close(z_u, z_0)
    with pytest.raises(ValueError, match=r"unknown class 'basalt'.*cobbles"):
        model.sample(1, "cpu", cls="basalt")
    with pytest.raises(ValueError, match="needs a class"):
        model.sample(1, "cpu", guidance=2)


@pytest.mark.slow
def test_generate_class_and_bad_requests(cond_pipeline, tmp_path):
    from rockgen.tasks.generate import generate

    common = ["task=generate", "template=demo_latent", "num_samples=2", "batch_size=2", "T=2", "T_latent=2"]
    ckpt = f"ckpt_path={cond_pipeline['latent']}"
    res = generate(compose_config([*common, ckpt, "class=layered", "guidance=2"], tmp_path / "g"))
    assert len(list(res["samples_dir"].iterdir())) == 2
    with pytest.raises(ValueError, match=r"unknown class 'basalt'.*layered"):
        generate(compose_config([*common, f"ckpt_path={cond_pipeline['latent']}", "class=basalt"], tmp_path / "b"))
    assert not (tmp_path / "b" / "samples").exists()  # refused before any work
    with pytest.raises(ValueError, match="unconditional"):
        generate(compose_config([*common, f"ckpt_path={cond_pipeline['uncond']}", "guidance=2"], tmp_path / "u"))


@pytest.mark.slow
def test_conditional_validation_grid_has_a_row_per_class(cond_pipeline):
    from PIL import Image

    grid = Image.open(cond_pipeline["root"] / "latent" / "images" / "samples_step0000003.png")
    # grid_samples=4 over 5 classes: one 96-px (3 x 32) sample per class row
    assert grid.size == (96 + 4, 5 * (96 + 2) + 2)


def test_mean_pairwise_distance_of_the_control_script():
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    from measure_control import mean_pairwise_distance

    d = 4
    pts = torch.zeros(3, d)
    pts[1, 0], pts[2, 1] = 2.0, 2.0  # pairwise distances 2, 2, 2√2
    expected = (2 + 2 + 2 * 2**0.5) / 3 / d**0.5
    assert abs(mean_pairwise_distance(pts) - expected) < 1e-12
    assert mean_pairwise_distance(pts[:1]) != mean_pairwise_distance(pts[:1])  # NaN for a single sample


def test_autoencoder_checkpoints_from_before_the_class_field_still_match():
    """An autoencoder saved before UNetConfig.num_classes existed must still feed a latent stage."""
    import dataclasses

    from rockgen.methods.latent_setup import _arch
    from rockgen.models import UNetConfig

    new = {f.name: getattr(UNetConfig(), f.name) for f in dataclasses.fields(UNetConfig)}
    old = {k: v for k, v in new.items() if k != "num_classes"}
    assert _arch(UNetConfig, old) == _arch(UNetConfig, {**new, "gradient_checkpointing": True})
    assert _arch(UNetConfig, old) != _arch(UNetConfig, {**new, "model_channels": 16})
    with pytest.raises(ValueError, match="unknown key"):
        _arch(UNetConfig, {**new, "bogus": 1})
