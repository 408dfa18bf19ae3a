"""Method objects under one LightningModule: each declares its protocol, and ``MethodModule`` trains each of them."""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from rockgen import presets as templates
from rockgen.lit.checkpoint import load_checkpoint_module
from rockgen.lit.module import MethodModule
from rockgen.methods.base import Method
from rockgen.methods.diffae_stages import DiffAEAutoencoder, DiffAELatentDDIM, diffae_method
from rockgen.methods.pixel import PixelDDPM
from rockgen.methods.protocol import GenerationMode, ReconstructionCode
from rockgen.methods.vae import VAE

# template → (method class, the LightningModule name checkpoints record)
METHODS = {
    "demo": (DiffAEAutoencoder, "LitModel"),
    "demo_latent": (DiffAELatentDDIM, "LitModel"),
    "demo_pixel": (PixelDDPM, "PixelDiffusion"),
    "demo_vae": (VAE, "LitVAE"),
}


def build(template: str) -> MethodModule:
    import hydra

    torch.manual_seed(0)
    return hydra.utils.instantiate(templates.presets()[template]["model"], _convert_="all")


@pytest.mark.parametrize("template", sorted(METHODS))
def test_every_method_declares_the_protocol(template):
    module = build(template)
    cls, name = METHODS[template]
    method = module.method
    assert type(method) is cls and type(module).__name__ == name and isinstance(method, Method)
    assert method.method_key in ("diffae", "pixel", "vae") and method.method_label and method.preset_method
    assert template.endswith(method.preset_method) or template == "demo"
    assert isinstance(method.sample_options, frozenset)
    assert not method.sample_options & {"self", "req", "N", "device", "T", "T_latent", "seed"}
    modes = method.generation_modes()
    assert modes and all(isinstance(m, GenerationMode) for m in modes)
    codes = method.reconstruction_codes()
    assert all(isinstance(c, ReconstructionCode) for c in codes)
    assert bool(codes) == hasattr(method, "encode")  # a method reconstructs exactly when it has an encoder
    conf, pairs = method.ema_policy()
    assert conf.decay > 0 and pairs and all(ema is not net for ema, net in pairs)
    params, optim = method.optimizer_setup()
    assert optim.lr > 0 and len(list(params)) > 0
    # the module answers for its method (public API as before) and the state dict has the old key layout
    assert module.sample.__func__ is Method.sample and module.image_size == method.image_size
    keys = list(module.state_dict())
    assert keys and not any(k.startswith("method.") for k in keys)
    assert all(k.startswith(("model.", "ema_model.", "latent_")) for k in keys)


def test_sample_options_are_what_each_method_understands(caplog):
    diffae, pixel, vae = (build(t).method for t in ("demo_latent", "demo_pixel", "demo_vae"))
    assert {"sampler", "sampler_latent", "seamless", "cls", "guidance", "noise"} <= diffae.sample_options
    assert {"method", "eta", "sampler", "cls", "guidance"} <= pixel.sample_options
    assert vae.sample_options == {"method", "temperature", "latent_stats"}
    with caplog.at_level(logging.WARNING):
        a = vae.sample(2, "cpu", T=7, T_latent=3, seed=1, method="prior", sampler="unipc")  # sampler: not the VAE's
    assert "ignores ['sampler']" in caplog.text
    assert torch.equal(a, vae.sample(2, "cpu", seed=1, method="prior")) and a.shape == (2, 3, 32, 32)
    assert "latent" in diffae.sample_unavailable()  # no trained latent DDIM yet
    assert pixel.sample_unavailable() is None and vae.sample_unavailable() is None


def test_diffae_stage_names_choose_the_method():
    args = {k: v for k, v in templates.presets()["demo"]["model"].items() if k != "_target_"}
    assert type(diffae_method(**args)) is DiffAEAutoencoder
    with pytest.raises(ValueError, match="model.stage"):
        diffae_method(**args, stage="pixel")
    with pytest.raises(ValueError, match="model.latent"):
        diffae_method(**args, stage="latent")  # a latent stage needs its section


def _batches(module: MethodModule, n: int = 4):
    """Two batches of what the method trains on: tiles in [-1, 1], or latent codes for the latent DDIM."""
    g = torch.Generator().manual_seed(0)
    if isinstance(module.method, DiffAELatentDDIM):
        dim = module.latent_mean.shape[0]
        return [{"z": torch.randn(n, dim, generator=g), "index": torch.arange(n)} for _ in range(2)]
    s = module.image_size
    img = lambda: torch.rand(n, 3, s, s, generator=g) * 2 - 1  # noqa: E731
    return [{"img": img(), "index": torch.arange(n), "source": torch.zeros(n, dtype=torch.long)} for _ in range(2)]


@pytest.mark.parametrize("template", sorted(METHODS))
def test_one_module_trains_each_method_for_two_steps(template, tmp_path):
    module = build(template)
    method = module.method
    if isinstance(method, DiffAELatentDDIM):  # its set-up loads a trained autoencoder (tests/test_latent.py)
        method.prepare_latent_training = lambda: method.latent_ready.fill_(True)
    trained = {id(p) for p in method.optimizer_setup()[0]}
    before = {k: v.clone() for k, v in module.state_dict().items()}
    names = dict(module.named_parameters())
    trainer = pl.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, DataLoader(_batches(module), batch_size=None))
    after = module.state_dict()
    net = {n: p for n, p in names.items() if n.startswith("method.model.")}  # the trained copy (not the EMA)
    changed = {id(p) for n, p in net.items() if not torch.equal(before[n.removeprefix("method.")], p)}
    frozen = [n for n, p in net.items() if id(p) not in trained]
    # the optimiser moves the method's trainable parameters and nothing else of the trained net (a fresh net's
    # zero-initialised output layers leave a few parameters without gradient for the first steps)
    assert changed and changed <= trained
    assert all(id(names[n]) not in changed for n in frozen)
    assert bool(frozen) == isinstance(method, DiffAELatentDDIM)  # stage 2 freezes the autoencoder
    for ema, _ in method.ema_policy()[1]:  # the EMA copy moved toward the trained net
        moved = [not torch.equal(before[f"ema_model.{n}"], after[f"ema_model.{n}"]) for n, _ in _named(module, ema)]
        assert any(moved)
    assert not module.ema_model.training  # the EMA copy stays in eval mode through training
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_checkpoint_module(path)
    assert type(loaded) is type(module) and type(loaded.method) is type(method)
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.cpu()), key


def _named(module: MethodModule, sub: torch.nn.Module):
    """(name under ``ema_model``, parameter) of the parameters of ``sub``, a part of the EMA copy."""
    prefix = next(n for n, m in module.method.ema_model.named_modules() if m is sub)
    return [(f"{prefix}.{n}".lstrip("."), p) for n, p in sub.named_parameters()]


def test_old_and_new_key_layouts_both_load():
    module = build("demo_pixel")
    state = module.state_dict()
    inner = {f"method.{k}": v for k, v in state.items()}  # what the child module itself would be keyed as
    for layout in (state, inner):
        fresh = build("demo_pixel")
        fresh.load_state_dict(layout)
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


def test_the_module_reads_and_sets_its_methods_attributes():
    module = build("demo_latent")
    assert module.latent_conf is module.method.latent_conf and module.model is module.method.model
    module.code_class = torch.tensor([0, 1])  # as the latent stage's set-up does: the method must see it
    assert torch.equal(module.method.code_class, torch.tensor([0, 1])) and "code_class" not in module.__dict__
    module.poison_step = 3  # a name the method does not hold stays on the module (e.g. a test subclass's)
    assert module.poison_step == 3 and not hasattr(module.method, "poison_step")
    with pytest.raises(AttributeError):
        module.no_such_attribute  # noqa: B018
