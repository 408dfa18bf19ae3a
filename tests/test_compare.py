"""task=compare: every method gets a speed row, checkpoints get reconstruction rows, both files written."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, compose_config

from rockgen import presets as templates

# One timed call of a couple of steps per method; the data of the tiny test config.
FAST = [
    "task=compare",
    "compare.batch_size=2",
    "compare.options.diffae.T=2",
    "compare.options.diffae.T_latent=2",
    "compare.options.pixel.T=[2,3]",
    "compare.options.pixel.ddpm_probe_steps=2",
    "compare.fid_samples=4",
    "compare.recon_items=2",
    "compare.device=cpu",
    *[o for o in TINY if o.startswith("data.")],
]


def save_untrained(name: str, path):
    """The checkpoint of an untrained model of template ``name``, in the layout Lightning writes."""
    import hydra

    model = hydra.utils.instantiate(templates.presets()[name]["model"], _convert_="all")
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 0}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    return {
        kind: save_untrained(name, folder / f"{name}.ckpt")
        for kind, name in (("diffae", "demo"), ("pixel", "demo_pixel"), ("vae", "demo_vae"))
    }


def test_compare_writes_every_row(checkpoints, tmp_path):
    from rockgen.tasks.compare import compare

    ckpts = [f"compare.{kind}_ckpt={path}" for kind, path in checkpoints.items()]
    report = compare(compose_config([*FAST, *ckpts, "compare.presets=[demo_vae]", "compare.isolate=false"], tmp_path))
    models = report["models"]
    assert [(m["kind"], m["source"].startswith("fresh")) for m in models] == [
        ("diffae", False),
        ("pixel", False),
        ("vae", False),
        ("vae", True),
    ]
    methods = {(m["kind"], r["method"]) for m in models for r in m["rows"]}
    assert methods == {
        ("diffae", "T=2"),
        ("pixel", "DDIM-2"),
        ("pixel", "DDIM-3"),
        ("pixel", "DDPM-1000"),
        ("vae", "decode"),
    }
    for m in models:
        assert m["params_m"] > 0 and m["image_size"] == 32
        for r in m["rows"]:
            assert r["samples_per_s"] > 0 and r["s_per_sample"] == pytest.approx(1 / r["samples_per_s"])
    ddpm = next(r for r in models[1]["rows"] if r["method"].startswith("DDPM"))
    assert not ddpm["measured"] and "estimated" in ddpm["note"]
    recon = {(m["kind"], r["code"]) for m in models for r in m["reconstruction"]}
    assert recon == {
        ("vae", "z = μ (decode)"),
        ("diffae", "z_sem + inferred x_T (DDIM-2)"),
        ("diffae", "z_sem only, random x_T (DDIM-2)"),
    }  # checkpoints only; pixel has no encoder
    table = (tmp_path / "comparison.md").read_text()
    for _, method in methods:
        assert f"| {method} |" in table, method
    assert "PSNR" in table and "n/a (no AlexNet weights)" in table
    assert json.loads((tmp_path / "comparison.json").read_text())["models"][0]["kind"] == "diffae"


def test_isolated_worker_reports_its_own_peak_memory(tmp_path):
    from rockgen.tasks.compare import compare

    report = compare(compose_config([*FAST, "compare.presets=[demo_vae]"], tmp_path))
    (model,) = report["models"]
    assert report["environment"]["isolated"] and model["peak_memory_mb"] > 0
    assert model["rows"][0]["method"] == "decode"


def test_compare_needs_something_to_measure(tmp_path):
    from rockgen.tasks.compare import compare

    with pytest.raises(ValueError, match="nothing to compare"):
        compare(compose_config(["task=compare"], tmp_path))
    with pytest.raises(ValueError, match="unknown template"):
        compare(compose_config(["task=compare", "compare.presets=[nope]"], tmp_path))
