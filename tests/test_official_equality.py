"""Imported official DiffAE networks compute what the official code computes (needs the official code).

Set ``ROCKGEN_OFFICIAL_DIFFAE`` to a checkout of phizaz/diffae; otherwise these tests are skipped. A fixture
builds the official network from an official ``TrainConfig`` with random weights (every parameter drawn, so the
zero-initialised output layers do not make ε̂ ≡ 0), saves it the way the official ``LitModel`` does (Lightning
1.4 layout) and imports it with ``task=import_official``; the tests load the written rockgen checkpoint.

* The equality proof is in float64: both networks converted with ``.double()`` (the official code's float32
  casts, ``.float()`` and a float32 sinusoid, are kept in float64 while it runs) give the same z_sem, ε̂,
  latent ε̂, latent DDIM-20 and DDIM-20 render to 1e-9 relative (measured 1e-15 to 1e-13): same function.
* In float32 the two differ only by rounding, and that rounding is not smaller than 1e-5 on ε̂ at ffhq64 (the
  issue asked for 1e-5): the official code's own float32 ε̂ is already 9.5e-06 away from the float64 value,
  and any reordering of the arithmetic moves it by about as much. Starting from a rockgen copy patched to the
  official arithmetic (bit-identical to it), one rockgen op at a time moves ε̂ at ffhq64 by: channels_last
  2.2e-05 (PyTorch's CPU channels_last convolution and GroupNorm kernels round more than the NCHW ones:
  rockgen's own float32 error grows to 2.0e-05), SDPA attention 1.1e-05, folded AdaGN 9.1e-06, sub-pixel
  upsampling 5.6e-06; the last three leave rockgen as accurate as the official code. So the float32 ε̂ bound
  is 3e-05 (measured 2.2e-05 at ffhq64, 1.0e-05 small) and rockgen's float32 error must stay within 4x the
  official code's own; z_sem stays at 1e-05, renders and samples at 1e-04. Figures print with ``pytest -s``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import compose_config

OFFICIAL = os.environ.get("ROCKGEN_OFFICIAL_DIFFAE")
pytestmark = pytest.mark.skipif(not OFFICIAL, reason="ROCKGEN_OFFICIAL_DIFFAE (official DiffAE checkout) not set")
EXACT = 1e-9  # float64, relative to the largest |value|: the networks are one function


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


def _save_like_official(conf, model, ema, path: Path, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the official LitModel's Trainer (Lightning 1.4) writes: returns the (conds_mean, conds_std) used."""
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


@contextlib.contextmanager
def _official_float64(net: torch.nn.Module):
    """Run the official ``net`` (already ``.double()``) in float64 throughout.

    Its code casts to float32 in three places: ``GroupNorm32`` and the attention softmax call ``.float()``,
    the UNet/encoder cast their input to ``self.dtype`` (float32), and the timestep sinusoid is float32. Here
    ``.float()`` keeps float64 tensors, ``self.dtype`` is float64, and the (float32, as rockgen's) sinusoid
    is cast to float64 before its Linear, as rockgen casts it to the weights' dtype.
    """
    ua, ln = importlib.import_module("model.unet_autoenc"), importlib.import_module("model.latentnet")
    to_float, sinusoids = torch.Tensor.float, (ua.timestep_embedding, ln.timestep_embedding)

    def keep_float64(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else to_float(self, *args, **kwargs)

    typed = [m for m in net.modules() if isinstance(m.__dict__.get("dtype"), torch.dtype)]
    torch.Tensor.float = keep_float64
    ua.timestep_embedding = lambda t, dim, **kw: sinusoids[0](t, dim, **kw).double()
    ln.timestep_embedding = lambda t, dim, **kw: sinusoids[1](t, dim, **kw).double()
    for m in typed:
        m.dtype = torch.float64
    try:
        yield
    finally:
        torch.Tensor.float = to_float
        ua.timestep_embedding, ln.timestep_embedding = sinusoids
        for m in typed:
            m.dtype = torch.float32


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return _max(a, b) / b.abs().max().item()


@pytest.fixture(scope="module", params=["small", pytest.param("ffhq64", marks=pytest.mark.slow)])
def pair(request, tmp_path_factory):
    """(official EMA network, imported rockgen LitModel) with the same random weights, + the official conf."""
    from rockgen.lit.checkpoint import module_class
    from rockgen.official import OfficialImportError, import_official
    from rockgen.tasks import run_task

    name, tmp = request.param, tmp_path_factory.mktemp(request.param)
    conf = _train_config(name)
    torch.manual_seed(0)
    model, ema = conf.model_conf.make_model(), conf.model_conf.make_model()
    _randomise(model, 1)
    _randomise(ema, 2)  # different from model: proves the EMA copy is the one used
    ema.eval()
    _unit_output(ema, conf.img_size)
    path = tmp / "official" / "last.ckpt"
    path.parent.mkdir()
    mean, std = _save_like_official(conf, model, ema, path, conf.style_ch)
    del model

    with pytest.raises(OfficialImportError, match="trusted_checkpoint=true"):
        import_official(path)  # Lightning 1.4 class keys: weights_only refuses
    over = ["task=import_official", f"official_ckpt={path}", "trusted_checkpoint=true"]
    out = Path(run_task(compose_config(over, tmp / "import"))["checkpoint"])
    ours = module_class({}).load_from_checkpoint(out, map_location="cpu").eval()
    return SimpleNamespace(name=name, conf=conf, ema=ema, ours=ours, mean=mean, std=std, ckpt=out, tmp=tmp)


def _inputs(size: int):
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
    return x0, torch.randn(2, 3, size, size, generator=gen), torch.tensor([17, 640])


@torch.no_grad()
def test_networks_are_one_function_in_float64(pair):
    """Both networks in float64 agree to 1e-9 relative: same function; float32 rounding measured against it."""
    from rockgen.samplers import get_sampler

    conf, ours = pair.conf, pair.ours
    x0, x_t, t = _inputs(conf.img_size)
    off32, dec, enc, lat = pair.ema, ours.ema_model.decoder, ours.ema_model.encoder, ours.ema_model.latent_net
    fmt = ours.memory_format  # rockgen as it runs (channels_last)
    z32 = {"official": off32.encoder(x0), "rockgen": ours.encode(x0)}
    eps32 = {
        "official": off32(x=x_t, t=t, x_start=x0).pred,
        "rockgen": dec(x_t.to(memory_format=fmt), t, z32["rockgen"]),
    }

    off = copy.deepcopy(off32).double()
    dec, enc, lat = (copy.deepcopy(m).double() for m in (dec, enc, lat))
    gen = torch.Generator().manual_seed(5)
    rb = 2 if pair.name == "small" else 1
    x_T = torch.randn(rb, 3, conf.img_size, conf.img_size, generator=gen, dtype=torch.float64)
    z_T = torch.randn(2, conf.style_ch, generator=gen, dtype=torch.float64)
    x0, x_t = x0.double(), x_t.double()
    ddim = get_sampler("ddim")
    with _official_float64(off):
        z_off, eps_off = off.encoder(x0), off(x=x_t, t=t, x_start=x0).pred
        lat_eps_off = off.latent_net(z_T, t).pred
        lat_off = (
            conf._make_latent_diffusion_conf(20)
            .make_sampler()
            .sample(model=off.latent_net, noise=z_T, clip_denoised=False)
        )
        if pair.name == "small":  # 40 float64 UNet passes: the sampler is the same code at both sizes
            render_off = conf._make_diffusion_conf(20).make_sampler().sample(model=off, noise=x_T, cond=z_off[:rb])
    z = enc(x0.to(memory_format=fmt))
    rel = {
        "z_sem": _rel(z, z_off),
        "eps": _rel(dec(x_t.to(memory_format=fmt), t, z), eps_off),
        "latent_eps": _rel(lat(z_T, t), lat_eps_off),
    }
    latent = ddim(lat, z_T, ours.latent_schedule, 20, clip_x0=False, prediction="eps")  # as sample_latents
    rel["latent_ddim20"] = _rel(latent, lat_off)
    if pair.name == "small":
        fn = lambda x, s: dec(x, s, cond=z[:rb])  # noqa: E731
        x_T, clip = x_T.to(memory_format=fmt), ours.diffusion_conf.clip_x0  # the imported setting (True)
        rel["render_ddim20"] = _rel(ddim(fn, x_T, ours.schedule, 20, clip_x0=clip, prediction="eps"), render_off)
    err32 = {k: _max(eps32[k], eps_off) for k in eps32}
    print(f"\n[{pair.name}] float64 max |official - rockgen| / max |official|: " + _fmt(rel))
    print(f"[{pair.name}] float32 eps vs the float64 eps: " + _fmt(err32) + f"; z_sem {_fmt(_zerr(z32, z_off))}")
    assert all(v < EXACT for v in rel.values()), rel
    assert all(v.dtype == torch.float64 for v in (z_off, eps_off, lat_off, latent))  # truly float64 throughout
    # rockgen's float32 rounding is of the official code's order (channels_last doubles it; 4x = headroom)
    assert err32["rockgen"] <= 4 * err32["official"], err32


def _zerr(z32: dict[str, torch.Tensor], z64: torch.Tensor) -> dict[str, float]:
    return {k: _max(v, z64) for k, v in z32.items()}


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in values.items())


@torch.no_grad()
def test_float32_outputs_match(pair):
    """z_sem, ε̂, DDIM-20 render, latent DDIM-20 and sample of the imported checkpoint vs the official code."""
    conf, ema, ours = pair.conf, pair.ema, pair.ours
    x0, x_t, t = _inputs(conf.img_size)
    gen = torch.Generator().manual_seed(4)
    rb = 2 if pair.name == "small" else 1  # batch of the sampling loops (ffhq64: 40 UNet passes per loop pair)
    diffs = {}
    z_off, eps_off = ema.encoder(x0), ema(x=x_t, t=t, x_start=x0).pred
    z_ours = ours.encode(x0)
    eps_ours = ours.ema_model.decoder(x_t.contiguous(memory_format=ours.memory_format), t, z_ours)
    diffs["z_sem"], diffs["eps"] = _max(z_off, z_ours), _max(eps_off, eps_ours)

    x_T = torch.randn(rb, 3, conf.img_size, conf.img_size, generator=gen)
    z_off, z_ours = z_off[:rb], z_ours[:rb]
    sampler = conf._make_diffusion_conf(20).make_sampler()
    render_off = (sampler.sample(model=ema, noise=x_T, cond=z_off) + 1) / 2
    diffs["render_ddim20"] = _max(render_off, ours.render(x_T, z_ours, T=20))

    lat_noise = torch.randn(rb, conf.style_ch, generator=gen)
    latent_sampler = conf._make_latent_diffusion_conf(20).make_sampler()
    z_lat = latent_sampler.sample(model=ema.latent_net, noise=lat_noise, clip_denoised=False) * pair.std + pair.mean
    sample_off = (sampler.sample(model=ema, noise=x_T, cond=z_lat) + 1) / 2
    sample_ours = ours.sample(rb, "cpu", T=20, T_latent=20, noise=x_T, latent_noise=lat_noise)
    # relative: a random latent net's z reaches the hundreds (1/sqrt(abar) ~ 45 at t=950 for const 0.008)
    diffs["latent_ddim20_rel"] = _rel(ours.sample_latents(rb, noise=lat_noise, T_latent=20), z_lat)
    diffs["sample_ddim20"] = _max(sample_off, sample_ours)
    print(f"\n[{pair.name}] float32 max |official - rockgen|: " + _fmt(diffs))
    assert render_off.std() > 0.05 and eps_off.std() > 0.05  # the comparison is of non-trivial outputs
    assert diffs["z_sem"] < 1e-5 and diffs["latent_ddim20_rel"] < 1e-5
    assert diffs["eps"] < 3e-5  # not the 1e-5: float32 rounding alone exceeds it (module docstring)
    assert diffs["render_ddim20"] < 1e-4 and diffs["sample_ddim20"] < 1e-4


def test_imported_official_checkpoint_inverts_and_generates(pair):
    """The written checkpoint serves the whole API and ``task=generate`` (the issue's "done when")."""
    from rockgen.tasks import run_task

    if pair.name != "small":
        pytest.skip("the same code path as the small config; generating at ffhq64 only costs time")
    ours, size = pair.ours, pair.conf.img_size
    x0, _, _ = _inputs(size)
    z = ours.encode(x0)
    x_T = ours.encode_stochastic(x0, z, T=20)
    rec = ours.render(x_T, z, T=20)
    assert x_T.shape == rec.shape == x0.shape and torch.isfinite(x_T).all() and 0 <= rec.min() <= rec.max() <= 1
    assert ours.sample(2, "cpu", T=5, T_latent=5, seed=0).shape == (2, 3, size, size)
    res = run_task(compose_config(["task=generate", "num_samples=4", f"ckpt_path={pair.ckpt}"], pair.tmp / "gen"))
    assert len(list(Path(res["samples_dir"]).glob("*.png"))) == 4
