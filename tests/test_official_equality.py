"""Imported official DiffAE networks compute what the official code computes (needs the official code).

Set ``ROCKGEN_OFFICIAL_DIFFAE`` to a checkout of phizaz/diffae (e.g. /work/official/diffae); otherwise these
tests are skipped. Each builds the official network from an official ``TrainConfig`` with random weights
(every parameter drawn, so the zero-initialised output layers do not make ε̂ ≡ 0), saves it the way the
official ``LitModel`` does (Lightning 1.4 layout), imports it and compares, on the same inputs:
the semantic code, ε̂(x_t, t, x_start), DDIM-20 renders, and latent DDIM-20 → render samples.
The measured maximum absolute differences are printed (``pytest -s``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
import torch

OFFICIAL = os.environ.get("ROCKGEN_OFFICIAL_DIFFAE")
pytestmark = pytest.mark.skipif(not OFFICIAL, reason="ROCKGEN_OFFICIAL_DIFFAE (official DiffAE checkout) not set")


def _official():
    """The official ``config`` module, imported from ROCKGEN_OFFICIAL_DIFFAE (appended to sys.path, so
    rockgen's own ``experiment``/``templates`` keep precedence over the official files of the same names)."""
    root = str(Path(OFFICIAL).resolve())
    if root not in sys.path:
        sys.path.append(root)
    config = importlib.import_module("config")
    if not str(Path(config.__file__).resolve()).startswith(root):
        pytest.fail(f"imported 'config' from {config.__file__}, not from ROCKGEN_OFFICIAL_DIFFAE={root}")
    return config


def _train_config(name: str):
    """An official TrainConfig, set up field by field as the official templates do."""
    cfg = _official()
    conf = cfg.TrainConfig()
    # autoenc_base(): the DiffAE autoencoder with a DDIM sampler
    conf.model_name = cfg.ModelName.beatgans_autoenc
    conf.diffusion_type = "beatgans"
    conf.beatgans_gen_type = cfg.GenerativeType.ddim
    conf.beta_scheduler = "linear"
    conf.net_attn = (16,)
    conf.net_beatgans_attn_head = 1
    conf.net_beatgans_embed_channels = 512
    conf.net_beatgans_resnet_two_cond = True
    conf.net_enc_pool = "adaptivenonzero"
    conf.T_eval, conf.T = 20, 1000
    # latent_diffusion_config() + latent_mlp_2048_norm_10layers(): the latent DDIM over normalised z_sem
    conf.train_mode = cfg.TrainMode.latent_diffusion
    conf.latent_gen_type = cfg.GenerativeType.ddim
    conf.latent_T_eval = 20
    conf.latent_znormalize = True
    conf.latent_beta_scheduler = "const0.008"
    conf.net_latent_net_type = cfg.LatentNetType.skip
    conf.net_latent_activation = cfg.Activation.silu
    conf.net_latent_use_norm = True
    conf.net_latent_condition_bias = 1
    if name == "ffhq64":  # ffhq64_autoenc(): 90.8 M parameters, with the 10 x 2048 latent MLP
        conf.img_size, conf.net_ch = 64, 64
        conf.net_ch_mult, conf.net_enc_channel_mult = (1, 2, 4, 8), (1, 2, 4, 8, 8)
        conf.net_latent_layers, conf.net_latent_num_hid_channels = 10, 2048
    else:  # small: 32 px, 2 levels, attention at 16 px, z_sem of 128, latent MLP 4 x 256
        conf.img_size, conf.net_ch = 32, 32
        conf.net_ch_mult, conf.net_enc_channel_mult = (1, 2), (1, 2, 2)
        conf.net_num_res_blocks = conf.net_enc_num_res_blocks = 1
        conf.net_beatgans_embed_channels = conf.style_ch = 128
        conf.net_latent_layers, conf.net_latent_num_hid_channels = 4, 256
    conf.net_latent_skip_layers = list(range(1, conf.net_latent_layers))
    conf.make_model_conf()
    return conf


def _randomise(net: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            scale = 0.05 if p.ndim > 1 else 0.1
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def _unit_output(net: torch.nn.Module, size: int) -> None:
    """Scale the last conv so ε̂ has unit std, as a trained ε-predictor's: the absolute tolerances then mean
    what they would for real weights (a random 90 M network's raw output is many times larger)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 3, size, size, generator=gen)
    with torch.no_grad():
        std = net(x=x, t=torch.tensor([500]), x_start=x.clamp(-1, 1)).pred.std()
        net.out[2].weight.div_(std)
        net.out[2].bias.div_(std)


def _save_like_official(conf, model, ema, path: Path, dim: int) -> torch.Tensor:
    """What the official LitModel's Trainer (Lightning 1.4) writes: returns the conds_std used."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    gen = torch.Generator().manual_seed(7)
    conds_mean = torch.randn(1, dim, generator=gen) * 0.3
    conds_std = torch.rand(1, dim, generator=gen) + 0.5
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"ema_model.{k}": v for k, v in ema.state_dict().items()})
    state["x_T"] = torch.randn(conf.sample_size, 3, conf.img_size, conf.img_size, generator=gen)
    state["conds_mean"], state["conds_std"] = conds_mean, conds_std
    torch.save(
        {
            "epoch": 3,
            "global_step": 1234,
            "pytorch-lightning_version": "1.4.5",
            "state_dict": state,
            "callbacks": {ModelCheckpoint: {"best_model_path": ""}},  # class key, as Lightning 1.4 did
            "optimizer_states": [],
            "lr_schedulers": [],
            "hyper_parameters": conf.as_dict_jsonable(),
        },
        path,
    )
    return conds_mean, conds_std


@pytest.mark.parametrize("name", ["small", pytest.param("ffhq64", marks=pytest.mark.slow)])
def test_imported_network_matches_official(name, tmp_path):
    from rockgen.official import OfficialImportError, import_official

    conf = _train_config(name)
    torch.manual_seed(0)
    model = conf.model_conf.make_model()
    ema = conf.model_conf.make_model()
    _randomise(model, 1)
    _randomise(ema, 2)  # different from model: proves the EMA copy is the one used
    ema.eval()
    _unit_output(ema, conf.img_size)
    path = tmp_path / "last.ckpt"
    mean, std = _save_like_official(conf, model, ema, path, conf.style_ch)

    with pytest.raises(OfficialImportError, match="trusted_checkpoint=true"):
        import_official(path)  # Lightning 1.4 class keys: weights_only refuses
    ours = import_official(path, tmp_path / "imported.ckpt", trusted=True)

    gen = torch.Generator().manual_seed(3)
    size, batch = conf.img_size, 2
    rb = 2 if name == "small" else 1  # batch of the sampling loops (ffhq64: 40 UNet passes per loop pair)
    x0 = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    x_t = torch.randn(batch, 3, size, size, generator=gen)
    t = torch.tensor([17, 640])
    diffs = {}
    with torch.no_grad():
        z_off = ema.encoder(x0)
        eps_off = ema(x=x_t, t=t, x_start=x0).pred
        z_ours = ours.encode(x0)
        eps_ours = ours.ema_model.decoder(x_t.contiguous(memory_format=torch.channels_last), t, z_ours)
        diffs["z_sem"] = (z_off - z_ours).abs().max().item()
        diffs["eps"] = (eps_off - eps_ours).abs().max().item()
        print(f"\n[{name}] z_sem {diffs['z_sem']:.3g}, eps {diffs['eps']:.3g}", flush=True)

        x_T = torch.randn(rb, 3, size, size, generator=gen)
        z_off, z_ours = z_off[:rb], z_ours[:rb]
        sampler = conf._make_diffusion_conf(20).make_sampler()
        render_off = (sampler.sample(model=ema, noise=x_T, cond=z_off) + 1) / 2
        render_ours = ours.render(x_T, z_ours, T=20)
        diffs["render_ddim20"] = (render_off - render_ours).abs().max().item()

        lat_noise = torch.randn(rb, conf.style_ch, generator=gen)
        latent_sampler = conf._make_latent_diffusion_conf(20).make_sampler()
        z_lat = latent_sampler.sample(model=ema.latent_net, noise=lat_noise, clip_denoised=False) * std + mean
        print(f"\n[{name}] " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()), flush=True)
        sample_off = (sampler.sample(model=ema, noise=x_T, cond=z_lat) + 1) / 2
        sample_ours = ours.sample(rb, "cpu", T=20, T_latent=20, noise=x_T, latent_noise=lat_noise)
        z_lat_ours = ours.sample_latents(rb, noise=lat_noise, T_latent=20)
        # relative: a random latent net's z reaches the hundreds (1/sqrt(abar) ~ 45 at t=950 for const 0.008)
        diffs["latent_ddim20_rel"] = ((z_lat - z_lat_ours).abs().max() / z_lat.abs().max()).item()
        diffs["sample_ddim20"] = (sample_off - sample_ours).abs().max().item()
    print(f"\n[{name}] max |official - rockgen|: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    assert render_off.std() > 0.05 and eps_off.std() > 0.05  # the comparison is of non-trivial outputs
    assert diffs["z_sem"] < 1e-5 and diffs["eps"] < 1e-5
    assert diffs["render_ddim20"] < 1e-4 and diffs["sample_ddim20"] < 1e-4
    assert diffs["latent_ddim20_rel"] < 1e-5
