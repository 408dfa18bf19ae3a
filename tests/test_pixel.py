"""The pixel-space diffusion baseline: the unconditional UNet sampled by DDIM and DDPM; task=train."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, compose_config

from rockgen.lit.checkpoint import load_checkpoint_module
from rockgen.lit.pixel import PixelDiffusion

UNET = dict(
    image_size=16,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[8],
    dropout=0.0,
    embed_channels=32,
)


@pytest.fixture(scope="module")
def model() -> PixelDiffusion:
    torch.manual_seed(0)
    m = PixelDiffusion(unet=UNET, diffusion={"num_timesteps": 50}).eval()
    # A freshly built UNet outputs exactly zero (zero-initialised last conv): perturb the EMA copy so the
    # samplers see a network whose output depends on x_t and t.
    with torch.no_grad():
        for p in m.ema_model.out.parameters():
            p.normal_(0, 0.05)
    return m


@pytest.mark.parametrize("method, T", [("ddim", 5), ("ddpm", None), ("ddpm", 7)])
def test_sample_shapes_and_range(model, method, T):
    x = model.sample(3, "cpu", T=T, method=method, seed=0)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and torch.isfinite(x).all()


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
def test_sampling_is_deterministic_by_seed(model, method):
    a = model.sample(2, "cpu", T=4, method=method, seed=123)
    b = model.sample(2, "cpu", T=4, method=method, seed=123)
    c = model.sample(2, "cpu", T=4, method=method, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ddim_with_eta_draws_noise_from_the_seeded_generator(model):
    a = model.sample(2, "cpu", T=4, eta=1.0, seed=5)
    assert torch.equal(a, model.sample(2, "cpu", T=4, eta=1.0, seed=5))
    assert not torch.equal(a, model.sample(2, "cpu", T=4, eta=0.0, seed=5))


def test_generate_compatible_signature_ignores_latent_steps(model):
    a = model.sample(1, "cpu", T=3, T_latent=50, seed=0)
    torch.testing.assert_close(a, model.sample(1, "cpu", T=3, seed=0))
    with pytest.raises(ValueError, match="ddim"):
        model.sample(1, "cpu", method="euler")


def test_a_conditional_unet_config_is_refused():
    with pytest.raises(ValueError, match="cond_channels"):
        PixelDiffusion(unet={**UNET, "cond_channels": 64})


def test_train_task_writes_sample_grid_and_a_loadable_checkpoint(tmp_path):
    from rockgen.tasks.train import train

    train(compose_config([*TINY, "template=demo_pixel"], tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and "val/loss" in metrics and "train/loss" in metrics
    assert (tmp_path / "images" / "val_step0000003.png").is_file()
    model = load_checkpoint_module(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(model, PixelDiffusion)
    assert model.sample(2, "cpu", T=2, seed=0).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("res", [64, 128, 256, 512])
def test_pixel_presets_are_the_autoencoder_decoders_without_z_sem(res, tmp_path):
    from rockgen import presets as templates

    p = templates.presets()
    unet, decoder = p[f"rock{res}_pixel"]["model"]["unet"], p[f"rock{res}"]["model"]["unet"]
    assert unet["cond_channels"] is None
    assert {k: v for k, v in unet.items() if k != "cond_channels"} == {
        k: v for k, v in decoder.items() if k != "cond_channels"
    }
    cfg = compose_config([f"template=rock{res}_pixel"], tmp_path)
    assert cfg.model._target_ == "rockgen.lit.pixel.PixelDiffusion" and cfg.data.image_size == res
