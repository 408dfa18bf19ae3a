"""Presets: every template composes, builds its networks, and the official ones have the official size."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import compose_config

from rockgen import presets as templates
from rockgen.config import parse
from rockgen.models import ConditionalUNet, EncoderConfig, SemanticEncoder, UNetConfig, count_parameters

OFFICIAL_MILLIONS = {64: (71.52, 19.32), 128: (103.87, 24.67), 256: (138.34, 30.15)}


@pytest.mark.parametrize("res", [64, 128, 256, 512])
def test_autoenc_presets_match_official_sizes(res):
    node = templates.presets()[f"rock{res}"]
    unet = ConditionalUNet(parse(UNetConfig, node["model"]["unet"], "unet"))
    enc = SemanticEncoder(parse(EncoderConfig, node["model"]["encoder"], "encoder"))
    n_unet, n_enc = count_parameters(unet) / 1e6, count_parameters(enc) / 1e6
    if res in OFFICIAL_MILLIONS:
        assert (round(n_unet, 2), round(n_enc, 2)) == OFFICIAL_MILLIONS[res]
    else:  # rockgen's 512 design: rock256's ladder plus a 64-wide 512² level
        assert (round(n_unet, 2), round(n_enc, 2)) == (139.86, 30.19)
    assert node["data"]["image_size"] == res
    assert node["model"]["encoder"]["out_channels"] == node["model"]["unet"]["cond_channels"] == 512


def test_aliases_and_names():
    p = templates.presets()
    assert p["rock64"] == p["rock64_autoenc"]
    assert {"demo", "rock64", "rock128", "rock256", "rock512"} <= set(p)
    assert all(node["template_name"] in p for node in p.values())


@pytest.mark.parametrize("name", ["demo", "rock64", "rock256_autoenc"])
def test_presets_compose_with_overrides(name, tmp_path):
    cfg = compose_config([f"template={name}", "trainer.max_steps=7", "model.optim.lr=2e-5"], tmp_path)
    assert cfg.trainer.max_steps == 7 and cfg.model.optim.lr == 2e-5
    assert cfg.template_name == templates.presets()[name]["template_name"]
    assert cfg.data.image_size == cfg.model.unet.image_size


def test_demo_model_trains_one_step_on_cpu(tmp_path):
    import hydra

    cfg = compose_config([], tmp_path)
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    opt = torch.optim.SGD(model.model.parameters(), lr=0.1)
    # The zero-initialised output convolutions block the encoder's gradient on the very first step
    # (as in the official model): z_sem sits behind two of them, so the third step reaches the encoder.
    for _ in range(3):
        opt.zero_grad()
        loss = model.training_step({"img": x}, 0)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.model.encoder.parameters())


def test_run_stamp_is_shared_by_the_ranks_of_a_job(tmp_path, monkeypatch):
    """Timestamped run names (task=generate ...) come from ${run_stamp:}: one value for all ranks of a job."""
    monkeypatch.delenv("ROCKGEN_RUN_STAMP", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert compose_config(["task=generate"], tmp_path).run_name == "generate-job4242"
    monkeypatch.setenv("ROCKGEN_RUN_STAMP", "shared")  # what scripts/train_torchrun.sh exports
    assert compose_config(["task=interpolate"], tmp_path).run_name == "interpolate-shared"
    monkeypatch.delenv("ROCKGEN_RUN_STAMP")
    monkeypatch.delenv("SLURM_JOB_ID")
    assert re.fullmatch(r"generate-\d{8}-\d{6}", compose_config(["task=generate"], tmp_path).run_name)


@pytest.mark.parametrize("name", ["demo", "demo_latent", "demo_pixel", "demo_vae", "rock64", "rock128_latent"])
def test_preset_trainer_and_checkpoint_settings_survive_composition(name, tmp_path):
    """The template is composed after the trainer/callbacks groups: their defaults must not override it."""
    node = templates.presets()[name]
    cfg = compose_config([f"template={name}"], tmp_path)
    for key, value in node["trainer"].items():
        assert cfg.trainer[key] == value, f"trainer.{key}"
    every = node["callbacks"]["checkpoint"]["every_n_train_steps"]
    assert cfg.callbacks.checkpoint.every_n_train_steps == every
    assert cfg.data.batch_size == node["data"]["batch_size"]
