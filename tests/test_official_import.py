"""Importing official DiffAE checkpoints: key mapping round trip, every key accounted for, clear refusals, and an
imported checkpoint that encodes, inverts, renders, samples and runs task=generate / task=import_official.

No official code needed: a random rockgen model is written in the official layout (the inverse mapping) with a
matching official ``TrainConfig`` dict; ``test_official_equality.py`` checks against the official code itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_config

from rockgen import presets as templates
from rockgen.official import OfficialImportError, import_official, official_hparams, to_official

LATENT_NET = {"hidden_channels": 64, "num_layers": 3, "time_embed_channels": 128}  # official: = z_sem width


def _random_model(latent: bool, seed: int = 0):
    """The demo DiffAE (32 px, z_sem 128), ε-prediction, every weight random, EMA ≠ model, latent stats set."""
    from rockgen.lit.checkpoint import module_class

    torch.manual_seed(seed)
    args = {k: v for k, v in templates.presets()["demo"]["model"].items() if k != "_target_"}
    args["diffusion"] = {**args["diffusion"], "prediction": "eps"}  # the official code is ε-only
    # the official nets: no z_sem normalisation, a pooled encoder head, no spatial z_sem path (z_sem 128 as the
    # figures below expect)
    args["encoder"] = {**args["encoder"], "z_norm": "none", "head": "pool", "out_channels": 128}
    args["unet"] = {**args["unet"], "spatial_cond": 0, "cond_channels": 128}
    if latent:
        args.update(stage="latent", latent={"net": LATENT_NET, "T_latent": 5})
    model = module_class({})(**args)
    with torch.no_grad():
        for p in [*model.model.parameters(), *model.ema_model.parameters()]:
            p.add_(torch.randn_like(p) * 0.05)
        if latent:
            model.latent_mean.normal_()
            model.latent_std.uniform_(0.5, 1.5)
            model.latent_ready.fill_(True)
    return model.eval()


def _write_official(model, path: Path, *, state_edit=None, hp_edit=None) -> Path:
    """``model`` as an official LitModel checkpoint (weights-only loadable, like a stripped official file)."""
    state = to_official(model.state_dict())
    state["x_T"] = torch.randn(4, 3, 32, 32)
    hp = {**official_hparams(dict(model.hparams)), "name": "demo_official", "batch_size": 32, "data_name": "x"}
    if state_edit:
        state_edit(state)
    if hp_edit:
        hp_edit(hp)
    torch.save({"state_dict": state, "hyper_parameters": hp, "global_step": 42, "epoch": 1}, path)
    return path


@pytest.mark.parametrize("latent", [False, True])
def test_round_trip_is_bit_exact(latent, tmp_path):
    model = _random_model(latent)
    official = to_official(model.state_dict())
    # the official names (model/unet_autoenc.py, latentnet.py), not a re-statement of rockgen's
    assert official["model.time_embed.time_embed.0.weight"].shape == (128, 32)
    assert "ema_model.input_blocks.0.0.weight" in official and "model.encoder.out.3.weight" in official
    assert not any(".decoder." in k for k in official)
    if latent:
        assert official["conds_mean"].shape == (1, 128)
        assert (
            official["model.latent_net.layers.0.linear_emb.weight"]
            is official["model.latent_net.layers.0.cond_layers.1.weight"]
        )
    path = _write_official(model, tmp_path / "official.ckpt")

    imported = import_official(path, tmp_path / "rock.ckpt")  # weights_only suffices for this file
    theirs, ours = model.state_dict(), imported.state_dict()
    assert theirs.keys() == ours.keys()
    for key in theirs:
        assert torch.equal(theirs[key], ours[key]), key
    # the same architectures and schedules (the networks keep their configs as clean dataclasses)
    assert imported.model.decoder.cfg == model.model.decoder.cfg
    assert imported.model.encoder.cfg == model.model.encoder.cfg
    assert imported.diffusion_conf == model.diffusion_conf
    if latent:
        assert imported.model.latent_net.cfg == model.model.latent_net.cfg
        assert imported.latent_conf.diffusion == model.latent_conf.diffusion
    assert imported.hparams["stage"] == ("latent" if latent else "autoenc")
    assert imported.official_import["global_step"] == 42 and imported.official_import["name"] == "demo_official"


def _error(tmp_path, match, **edits):
    with pytest.raises(OfficialImportError, match=match):
        import_official(_write_official(_random_model(True), tmp_path / "bad.ckpt", **edits))


def test_unknown_and_missing_keys_are_listed(tmp_path):
    def add(state):
        state["model.extra_head.weight"] = torch.zeros(1)
        state["ema_model.time_embed.style.weight"] = torch.zeros(1)

    _error(tmp_path, r"2 unknown key.*ema_model\.time_embed\.style\.weight.*model\.extra_head\.weight", state_edit=add)

    def drop(state):
        del state["ema_model.out.2.bias"]
        del state["model.encoder.out.3.weight"]

    _error(
        tmp_path, r"missing 2 key.*ema_model\.decoder\.out\.2\.bias.*model\.encoder\.out\.3\.weight", state_edit=drop
    )


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    def widen(state):
        state["model.encoder.out.3.weight"] = torch.zeros(256, 128, 1, 1)

    _error(
        tmp_path,
        r"model\.encoder\.out\.3\.weight: official \(256, 128, 1, 1\) vs rockgen \(128, 128, 1, 1\)",
        state_edit=widen,
    )
    # an architecture from hyper_parameters that the weights do not fit: the first mismatching keys are named
    _error(tmp_path, r"shape mismatch.*input_blocks", hp_edit=lambda hp: hp.update(net_ch=64))


def test_unsupported_or_missing_hyper_parameters(tmp_path):
    _error(tmp_path, r"net_enc_pool='depthconv'", hp_edit=lambda hp: hp.update(net_enc_pool="depthconv"))
    _error(tmp_path, r"net_latent_condition_bias=0", hp_edit=lambda hp: hp.update(net_latent_condition_bias=0))
    _error(tmp_path, r"lack \['net_ch_mult', 'T'\]", hp_edit=lambda hp: [hp.pop("net_ch_mult"), hp.pop("T")])
    _error(tmp_path, r"beta_scheduler='quadratic'", hp_edit=lambda hp: hp.update(beta_scheduler="quadratic"))
    _error(tmp_path, r"twin", state_edit=lambda s: s.pop("model.latent_net.layers.1.cond_layers.1.bias"))


def test_pickled_checkpoint_needs_trust(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    path = _write_official(_random_model(False), tmp_path / "full.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["callbacks"] = {ModelCheckpoint: {"best_model_path": ""}}  # how Lightning 1.4 keyed callback states
    torch.save(ckpt, path)
    with pytest.raises(OfficialImportError, match=r"ModelCheckpoint.*class keys.*trusted_checkpoint=true"):
        import_official(path)
    assert import_official(path, trusted=True).official_import["global_step"] == 42
    with pytest.raises(OfficialImportError, match="not found"):
        import_official(tmp_path / "nope.ckpt")


def test_imported_checkpoint_encodes_renders_and_samples(tmp_path):
    from rockgen.lit.checkpoint import DEFAULT_CLASS, module_class

    model = _random_model(True)
    import_official(_write_official(model, tmp_path / "official.ckpt"), tmp_path / "rock.ckpt")
    loaded = module_class({}).load_from_checkpoint(tmp_path / "rock.ckpt", map_location="cpu").eval()
    assert DEFAULT_CLASS.endswith("LitModel")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = loaded.encode(x)
    assert torch.equal(z, model.encode(x))
    x_T = loaded.encode_stochastic(x, z, T=5)
    assert torch.equal(x_T, model.encode_stochastic(x, z, T=5))
    rec = loaded.render(x_T, z, T=5)
    assert rec.shape == (2, 3, 32, 32) and 0 <= rec.min() and rec.max() <= 1
    assert torch.equal(
        loaded.sample(2, "cpu", T=3, T_latent=3, seed=1), model.sample(2, "cpu", T=3, T_latent=3, seed=1)
    )
    assert loaded.hparams["evaluation"]["render_T"] == 20  # official T_eval


@pytest.mark.slow
def test_cli_import_then_generate(tmp_path):
    from rockgen.tasks import run_task

    src = _write_official(_random_model(True), tmp_path / "official.ckpt")
    out = run_task(compose_config(["task=import_official", f"official_ckpt={src}"], tmp_path / "imp"))
    ckpt = Path(out["checkpoint"])
    assert (
        ckpt == tmp_path / "imp" / "checkpoints" / "last.ckpt" and (tmp_path / "imp" / "import_report.json").is_file()
    )
    common = ["task=generate", "num_samples=2", "batch_size=2", "T=2", "T_latent=2", f"ckpt_path={ckpt}"]
    res = run_task(compose_config(common, tmp_path / "gen"))
    assert len(list(Path(res["samples_dir"]).glob("*.png"))) == 2
    with pytest.raises(ValueError, match="official_ckpt is not set"):
        run_task(compose_config(["task=import_official"], tmp_path / "none"))
