"""The transformer VAE baseline: shapes, the KL term, Gaussian sampling of the latent space, the tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_config

from rockgen.lit.checkpoint import load_checkpoint_module
from rockgen.lit.vae import LitVAE
from rockgen.metrics import MissingWeightsError
from rockgen.models import ViTAEConfig, ViTAutoencoder
from rockgen.models.vit_ae import kl_to_standard_normal, patchify, unpatchify

NET = dict(
    image_size=16,
    patch_size=4,
    width=32,
    encoder_depth=1,
    decoder_depth=1,
    num_heads=2,
    latent_dim=8,
    latent_tokens=2,
    head_channels=8,
)


def tiny_vae(**kwargs) -> LitVAE:
    return LitVAE(net=NET, **kwargs).eval()


def test_network_shapes_and_patch_roundtrip():
    net = ViTAutoencoder(ViTAEConfig(**NET))
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    x_hat, mu, logvar = net(x)
    assert x_hat.shape == x.shape and mu.shape == logvar.shape == (3, 8)
    assert torch.equal(unpatchify(patchify(x, 4), 4, 16), x)
    assert patchify(x, 4).shape == (3, 16, 4 * 4 * 3)
    with pytest.raises(ValueError, match="patch_size"):
        ViTAutoencoder(ViTAEConfig(image_size=18, patch_size=4))
    with pytest.raises(ValueError, match="num_heads"):
        ViTAutoencoder(ViTAEConfig(width=30, num_heads=4))


def test_kl_matches_the_closed_form_of_two_gaussians():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    logvar = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), expected, rtol=1e-12, atol=1e-12)
    assert torch.all(kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)  # q = prior


def test_beta_weights_the_kl_per_pixel_value_and_beta_zero_is_a_plain_autoencoder():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.manual_seed(0)
    vae = LitVAE(net=NET, beta=0.5, use_ema=False).train()
    terms = vae.losses(vae.model, x)
    torch.testing.assert_close(terms["loss"], terms["mse"] + 0.5 * terms["kl"] / x[0].numel())
    ae = LitVAE(net=NET, beta=0.0, use_ema=False).train()
    ae.model.load_state_dict(vae.model.state_dict())
    first, second = ae.losses(ae.model, x), ae.losses(ae.model, x)
    assert torch.equal(first["loss"], second["loss"]) and torch.equal(first["loss"], first["mse"])  # z = μ


def test_encode_decode_reconstruct_interpolate_api():
    vae = tiny_vae()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (2, 8)
    rec = vae.reconstruct(x)
    assert rec.shape == x.shape and rec.min() >= 0 and rec.max() <= 1
    path = vae.interpolate(x[:1], x[1:], 5)
    assert path.shape == (1, 5, 3, 16, 16)
    torch.testing.assert_close(path[0, 0], rec[0])  # the ends are the reconstructions
    torch.testing.assert_close(path[0, -1], rec[1])
    with pytest.raises(ValueError, match="16x16"):
        vae.encode(torch.zeros(1, 3, 32, 32))


def test_gaussian_sampler_matches_the_fitted_moments():
    vae = tiny_vae()
    gen = torch.Generator().manual_seed(1)
    mix = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    latents = torch.randn(500, 8, generator=gen, dtype=torch.float64) @ mix + 3.0  # correlated, offset
    stats = vae.fit_latent_gaussian(latents)
    np.testing.assert_allclose(stats["mean"], latents.mean(0).numpy(), atol=1e-12)
    np.testing.assert_allclose(stats["cov"], np.cov(latents.numpy(), rowvar=False), atol=1e-10)
    z = vae.sample_latents(40_000, "cpu", seed=0).double()
    cov = torch.from_numpy(stats["cov"])
    scale = cov.diagonal().sqrt()
    assert torch.allclose(z.mean(0), torch.from_numpy(stats["mean"]), atol=float(4 * scale.max() / 200))
    corr = torch.cov(z.T) / torch.outer(scale, scale)
    assert torch.allclose(corr, cov / torch.outer(scale, scale), atol=0.03)
    assert torch.equal(vae.sample_latents(4, seed=3), vae.sample_latents(4, seed=3))
    images = vae.sample(3, "cpu", T=20, T_latent=5, seed=0)  # diffusion step counts are ignored
    assert images.shape == (3, 3, 16, 16) and images.min() >= 0 and images.max() <= 1


def test_gaussian_sampling_without_a_fitted_gaussian_says_how_to_get_one():
    vae = tiny_vae()
    with pytest.raises(RuntimeError, match="task=vae_latents"):
        vae.sample(2, "cpu")
    assert vae.sample(2, "cpu", method="prior", seed=0).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="gaussian"):
        vae.sample(2, "cpu", method="ddim")


def test_lpips_term_without_backbone_weights_is_a_clear_error():
    vae = LitVAE(net=NET, lpips_weight=0.1)
    with pytest.raises(MissingWeightsError, match="alexnet"):
        vae.setup("fit")


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    """A demo_vae trained for 3 steps (validation and checkpoint included)."""
    from rockgen.tasks.train import train

    run_dir = tmp_path_factory.mktemp("vae-train")
    train(compose_config([*TINY, "template=demo_vae"], run_dir))
    return run_dir


def test_training_writes_checkpoint_grid_and_reconstruction_metrics(trained_vae):
    metrics = json.loads((trained_vae / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    for key in ("train/loss", "train/mse", "train/kl", "val/psnr", "val/ssim", "val/mse"):
        assert key in metrics, key
    assert "val/lpips" not in metrics  # no AlexNet weights in the test TORCH_HOME
    assert (trained_vae / "images" / "val_step0000003.png").is_file()
    model = load_checkpoint_module(trained_vae / "checkpoints" / "last.ckpt")
    assert isinstance(model, LitVAE) and not model.latent_gaussian_fitted


def test_latents_task_fits_the_gaussian_into_a_new_checkpoint(trained_vae, tmp_path):
    from rockgen.latents import load_latents
    from rockgen.tasks.vae_tasks import extract_latents

    ckpt = trained_vae / "checkpoints" / "last.ckpt"
    out = extract_latents(
        compose_config([*TINY, "task=vae_latents", "template=demo_vae", f"ckpt_path={ckpt}"], tmp_path)
    )
    z = np.load(tmp_path / "latents.npy")
    lat = load_latents(tmp_path / "latents.pt", expect_dim=128)
    assert z.shape == (out["num_latents"], 128) and len(lat.paths) == z.shape[0]
    with np.load(tmp_path / "latent_gaussian.npz") as stats:
        np.testing.assert_allclose(stats["mean"], z.mean(0), rtol=1e-5, atol=1e-6)
    model = load_checkpoint_module(tmp_path / "vae_gaussian.ckpt")
    assert model.latent_gaussian_fitted and int(model.latent_count) == z.shape[0]
    np.testing.assert_allclose(model.latent_mean.numpy(), z.mean(0), rtol=1e-5, atol=1e-6)
    assert model.sample(2, "cpu", seed=0).shape == (2, 3, 32, 32)
    fresh = load_checkpoint_module(ckpt)  # the same Gaussian from the .npz file
    a = fresh.sample(2, "cpu", seed=0, latent_stats=tmp_path / "latent_gaussian.npz")
    torch.testing.assert_close(a, model.sample(2, "cpu", seed=0))


def test_reconstruct_and_interpolate_tasks_write_their_images(trained_vae, tmp_path):
    from PIL import Image

    from rockgen.tasks.vae_tasks import interpolate, reconstruct

    ckpt = f"ckpt_path={trained_vae / 'checkpoints' / 'last.ckpt'}"
    cfg = compose_config([*TINY, "task=vae_reconstruct", "template=demo_vae", ckpt, "target_size=48"], tmp_path / "rec")
    res = reconstruct(cfg)
    pngs = sorted((tmp_path / "rec" / "reconstructions").glob("*.png"))
    assert res["images"] == len(pngs) > 0 and {"psnr", "ssim"} <= set(res)
    assert Image.open(pngs[0]).size == (48, 48)  # Lanczos-upscaled
    image_a, image_b = sorted(Path(cfg.data.demo_dir).rglob("*.png"))[:2]
    out = interpolate(
        compose_config(
            [
                *TINY,
                "task=vae_interpolate",
                "template=demo_vae",
                ckpt,
                "frames=4",
                f"image_a={image_a}",
                f"image_b={image_b}",
            ],
            tmp_path / "int",
        )
    )
    assert out["frames"].shape == (4, 3, 32, 32)
    assert Image.open(out["png"]).size[0] > 6 * 32  # 4 frames framed by the 2 inputs
    assert out["gif"].is_file()


def test_tasks_name_a_missing_or_foreign_checkpoint(tmp_path):
    from rockgen.lit.checkpoint import CheckpointError
    from rockgen.lit.pixel import PixelDiffusion
    from rockgen.tasks.vae_tasks import extract_latents

    with pytest.raises(CheckpointError, match="ckpt_path: .*not found"):
        extract_latents(compose_config(["task=vae_latents", f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path))
    pixel = PixelDiffusion(
        unet=dict(image_size=16, model_channels=32, channel_mult=[1], num_res_blocks=1, attention_resolutions=[])
    )
    ckpt = {"state_dict": pixel.state_dict(), "hyper_parameters": dict(pixel.hparams)}
    pixel.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "pixel.ckpt")
    with pytest.raises(CheckpointError, match="needs a LitVAE"):
        extract_latents(compose_config(["task=vae_latents", f"ckpt_path={tmp_path / 'pixel.ckpt'}"], tmp_path))


@pytest.mark.parametrize("res, millions", [(64, 23.80), (128, 58.17), (256, 183.72), (512, 203.78)])
def test_presets_build_the_documented_networks(res, millions, tmp_path):
    from rockgen import presets as templates
    from rockgen.config import parse

    node = templates.presets()[f"rock{res}_vae"]
    with torch.device("meta"):  # sizes only: no memory, no initialisation cost
        net = ViTAutoencoder(parse(ViTAEConfig, node["model"]["net"], "net"))
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == millions
    assert node["data"]["image_size"] == res and node["model"]["_target_"] == "rockgen.lit.vae.LitVAE"
    cfg = compose_config([f"template=rock{res}_vae", "model.beta=0"], tmp_path)
    assert cfg.model.beta == 0 and cfg.model.net.image_size == cfg.data.image_size == res
