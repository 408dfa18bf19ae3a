"""Stage 2 end to end: latent inference in dataset order, latent DDIM training, sample(), generation."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_config

from rockgen.latents import Latents, latent_stats, load_latents, save_latents
from rockgen.lit.checkpoint import CheckpointError
from rockgen.lit.diffae import LitModel
from rockgen.tasks.generate import generate
from rockgen.tasks.infer_latents import infer_latents
from rockgen.tasks.train import train

DATA = [o for o in TINY if o.startswith("data.")]


def latent_overrides(ae_ckpt, latents_path) -> list[str]:
    return [
        "template=demo_latent",
        "logger=csv",
        f"model.latent.autoenc_ckpt={ae_ckpt}",
        f"model.latent.latents_path={latents_path}",
        "data.batch_size=8",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "callbacks.checkpoint.every_n_train_steps=3",
        "model.latent.grid_samples=4",
        "model.evaluation.render_T=2",
        "trainer.accelerator=cpu",
    ]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Tiny autoencoder → latents → latent DDIM, shared by this file's tests."""
    root = tmp_path_factory.mktemp("pipeline")
    train(compose_config(TINY, root / "ae"))
    ae = root / "ae" / "checkpoints" / "last.ckpt"
    inf = infer_latents(compose_config(["task=infer_latents", f"ckpt_path={ae}", *TINY], root / "latents"))
    train(compose_config(latent_overrides(ae, inf["latents_path"]), root / "latent"))
    return {
        "ae": ae,
        "latents": inf["latents_path"],
        "latent": root / "latent" / "checkpoints" / "last.ckpt",
        "root": root,
    }


def test_latents_are_in_dataset_order_with_stats(pipeline):
    import hydra

    lat = load_latents(pipeline["latents"])
    model = LitModel.load_from_checkpoint(pipeline["ae"], map_location="cpu", weights_only=True)
    dm = hydra.utils.instantiate(
        compose_config(["task=infer_latents", *TINY], pipeline["root"]).data,
        image_size=model.image_size,
        _convert_="all",
    )
    dm.setup("predict")
    assert lat.paths == dm.predict_paths() and len(lat.paths) == lat.z.shape[0]
    items = [dm.predict_set[i] for i in (0, 7, len(lat.paths) - 1)]
    z = model.encode(torch.stack([it["img"] for it in items]))
    torch.testing.assert_close(lat.z[[0, 7, len(lat.paths) - 1]], z, rtol=1e-4, atol=1e-4)
    mean, std = latent_stats(lat.z)
    torch.testing.assert_close(lat.mean, mean)
    assert sorted(set(lat.labels)) == ["cobbles", "fractured", "granite", "gravel", "layered"]
    assert (pipeline["latents"].with_suffix(".npy")).is_file()


def test_normalise_round_trip():
    z = torch.randn(50, 8, dtype=torch.float64) * 3 + 1
    mean, std = latent_stats(z)
    lat = Latents(z=z.float(), paths=[""] * 50, labels=[""] * 50, mean=mean, std=std, fingerprint="x")
    zn = lat.normalise(z.float())
    torch.testing.assert_close(zn.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(zn.std(0, unbiased=False), torch.ones(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(lat.denormalise(zn), z.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_latent_inference_identical_with_two_ddp_processes(pipeline, tmp_path):
    cfg = compose_config(
        [
            "task=infer_latents",
            f"ckpt_path={pipeline['ae']}",
            *TINY,
            "strategy=ddp_spawn",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "data.val_batch_size=4",
        ],
        tmp_path,
    )
    res = infer_latents(cfg)
    two, one = load_latents(res["latents_path"]), load_latents(pipeline["latents"])
    assert two.paths == one.paths
    torch.testing.assert_close(two.z, one.z, rtol=1e-5, atol=1e-5)


def test_sample_shape_range_and_seed(pipeline):
    model = LitModel.load_from_checkpoint(pipeline["latent"], map_location="cpu", weights_only=True)
    a = model.sample(3, "cpu", T=2, T_latent=3, seed=1)
    b = model.sample(3, "cpu", T=2, T_latent=3, seed=1)
    c = model.sample(3, "cpu", T=2, T_latent=3, seed=2)
    assert a.shape == (3, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert (pipeline["root"] / "latent" / "images" / "samples_step0000003.png").is_file()


def test_autoencoder_checkpoint_cannot_sample(pipeline):
    model = LitModel.load_from_checkpoint(pipeline["ae"], map_location="cpu", weights_only=True)
    with pytest.raises(RuntimeError, match="latent"):
        model.sample(2, "cpu")


def test_generate_writes_exactly_n_files(pipeline, tmp_path):
    cfg = compose_config(
        [
            "task=generate",
            "template=demo_latent",
            f"ckpt_path={pipeline['latent']}",
            "num_samples=5",
            "batch_size=2",
            "T=2",
            "T_latent=2",
            "target_size=48",
            "trainer.accelerator=cpu",
        ],
        tmp_path,
    )
    res = generate(cfg)
    files = sorted(p.name for p in res["samples_dir"].iterdir())
    assert files == [f"{i:06d}.png" for i in range(5)]
    from PIL import Image

    assert Image.open(res["samples_dir"] / "000004.png").size == (48, 48)
    assert res["grid"].is_file()


def test_generate_from_autoencoder_is_a_clear_error(pipeline, tmp_path):
    cfg = compose_config(["task=generate", f"ckpt_path={pipeline['ae']}"], tmp_path)
    with pytest.raises(ValueError, match="latent"):
        generate(cfg)


def test_infer_latents_rejects_a_non_autoencoder_checkpoint(tmp_path):
    bad = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "rockgen_class": "rockgen.lit.common:RockgenModule"}, bad)
    with pytest.raises(CheckpointError, match="autoencoder"):
        infer_latents(compose_config(["task=infer_latents", f"ckpt_path={bad}"], tmp_path))


def test_mismatched_latents_file_is_a_clear_error(pipeline, tmp_path):
    lat = load_latents(pipeline["latents"])
    wrong = Latents(
        z=torch.zeros(40, 7),
        paths=[""] * 40,
        labels=[""] * 40,
        mean=torch.zeros(7),
        std=torch.ones(7),
        fingerprint=lat.fingerprint,
    )
    save_latents(tmp_path / "wrong_dim.pt", wrong)
    other = Latents(z=lat.z, paths=lat.paths, labels=lat.labels, mean=lat.mean, std=lat.std, fingerprint="0" * 16)
    save_latents(tmp_path / "other_ae.pt", other)
    for name, match in (
        ("wrong_dim.pt", "7-d"),
        ("other_ae.pt", "different autoencoder"),
        ("missing.pt", "not found"),
    ):
        cfg = compose_config(latent_overrides(pipeline["ae"], tmp_path / name), tmp_path / f"run-{name}")
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            train(cfg)


@pytest.mark.slow
def test_latent_stage_resume_is_bit_identical(pipeline, tmp_path, monkeypatch):
    """Stage 2 interrupted mid-epoch and at an epoch's end, then resumed: the same weights and Adam moments as an
    uninterrupted run (the codes' order is the tiles' EpochSampler, its position saved in the checkpoint)."""
    from test_determinism import assert_identical, state

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = [
            *latent_overrides(pipeline["ae"], pipeline["latents"]),
            "trainer.max_steps=8",
            "callbacks.checkpoint.every_n_train_steps=2",
            "trainer.enable_progress_bar=false",
        ]
        whole = tmp_path / "whole"
        out = train(compose_config(run, whole))
        assert out["trainer"].num_training_batches == 3  # 29 training codes, batch 8: steps 4 and 6 differ
        reference = state(whole / "checkpoints" / "last.ckpt")
        for step in (4, 6):
            ckpt = whole / "checkpoints" / f"step{step:07d}.ckpt"
            train(compose_config([*run, f"ckpt_path={ckpt}"], tmp_path / f"from{step}"))
            assert_identical(state(tmp_path / f"from{step}" / "checkpoints" / "last.ckpt"), reference)
    finally:
        torch.set_num_threads(before)


def test_latent_training_order_is_sharded_and_world_size_independent(tmp_path):
    from rockgen.data import LatentDataModule

    z = torch.arange(40, dtype=torch.float32)[:, None].repeat(1, 3)
    path, _ = save_latents(
        tmp_path / "latents.pt",
        Latents(
            z=z, paths=[f"{i}.png" for i in range(40)], labels=[""] * 40, mean=z.mean(0), std=z.std(0), fingerprint="x"
        ),
    )

    def first_global_batch(world: int) -> set[int]:
        rows = set()
        for rank in range(world):
            dm = LatentDataModule(str(path), batch_size=8, val_fraction=0.1, shuffle_seed=3)
            dm.trainer = type("T", (), {"world_size": world, "global_rank": rank})()
            dm.setup("fit")
            batch = next(iter(dm.train_dataloader()))["z"]
            assert batch.shape == (8 // world, 3)
            rows |= {int(v) for v in batch[:, 0]}
        return rows

    one, two = first_global_batch(1), first_global_batch(2)
    assert one == two and len(one) == 8 and all(r % 10 != 9 for r in one)  # every 10th code is validation


def test_generate_batch_as_geotiff_and_xyz_sheet(pipeline, tmp_path):
    rasterio = pytest.importorskip("rasterio", reason="output=geotiff needs the 'geo' extra")
    import numpy as np
    from PIL import Image

    from rockgen.gis import tile_origin

    zxy = (23, 4194304, 2796203)
    over = ["task=generate", f"ckpt_path={pipeline['latent']}", "num_samples=5", "batch_size=2", "T=2",
            "T_latent=2", "trainer.accelerator=cpu", "output=[geotiff,xyz]", f"zoom={zxy[0]}", f"x={zxy[1]}",
            f"y={zxy[2]}"]  # fmt: skip
    res = generate(compose_config(over, tmp_path))
    run = res["run_dir"]
    sheet = np.asarray(Image.open(run / "sheet.png"))
    s = Image.open(res["samples_dir"] / "000000.png").size[0]
    assert sheet.shape == (2 * s, 3 * s, 3)  # 5 tiles: 2 rows of 3, row by row
    for i in range(5):
        r, c = divmod(i, 3)
        tile = np.asarray(Image.open(res["samples_dir"] / f"{i:06d}.png").convert("RGB"))
        assert np.array_equal(sheet[r * s : (r + 1) * s, c * s : (c + 1) * s], tile)
    assert not sheet[s:, 2 * s :].any()  # the empty cell stays black
    left, top, px = tile_origin(*zxy)
    with rasterio.open(run / "sheet.tif") as src:
        assert src.crs.to_epsg() == 3857 and (src.width, src.height) == (3 * s, 2 * s)
        assert src.bounds.left == pytest.approx(left) and src.bounds.top == pytest.approx(top)
        assert src.res == pytest.approx((px, px))
        assert np.array_equal(np.moveaxis(src.read(), 0, 2), sheet)
    assert (run / "xyz" / "index.html").is_file() and (run / "xyz" / "23" / str(zxy[1]) / f"{zxy[2]}.png").is_file()


def test_generate_bad_gis_settings_fail_before_sampling(pipeline, tmp_path):
    base = ["task=generate", f"ckpt_path={pipeline['latent']}", "num_samples=2", "trainer.accelerator=cpu"]
    with pytest.raises(ValueError, match="zoom must be an integer in 0..30"):
        generate(compose_config([*base, "output=geotiff", "zoom=31"], tmp_path / "a"))
    with pytest.raises(ValueError, match="output must be one of"):
        generate(compose_config([*base, "output=jpeg"], tmp_path / "b"))
    assert not (tmp_path / "a" / "samples").exists() and not (tmp_path / "b" / "samples").exists()


def test_spacing_reaches_the_image_solver_and_is_checked(pipeline, tmp_path):
    from rockgen.lit.checkpoint import load_checkpoint_module
    from rockgen.samplers import dpmpp_2m_sample

    model = load_checkpoint_module(pipeline["latent"]).eval()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, model.latent_mean.shape[0], generator=g)
    x_T = torch.randn(2, 3, model.image_size, model.image_size, generator=g)
    got = model.render(x_T, z, 3, sampler="dpmpp_2m", spacing="trailing")
    d = model.diffusion_conf
    ref = dpmpp_2m_sample(model.decoder_fn(z), x_T, model.schedule, 3, clip_x0=d.clip_x0, prediction=d.prediction,
                          spacing="trailing")  # fmt: skip
    torch.testing.assert_close(got, ((ref.float() + 1) / 2).clamp(0, 1))
    assert not torch.equal(got, model.render(x_T, z, 3, sampler="dpmpp_2m"))  # the default (quadratic) differs
    with pytest.raises(ValueError, match="DDIM uses its kept steps"):
        model.render(x_T, z, 3, spacing="trailing")
    base = ["task=generate", f"ckpt_path={pipeline['latent']}", "num_samples=2", "T=2", "T_latent=2",
            "trainer.accelerator=cpu"]  # fmt: skip
    with pytest.raises(ValueError, match="unknown timestep spacing 'even'"):
        generate(compose_config([*base, "sampler=unipc", "spacing=even"], tmp_path / "bad"))
    res = generate(compose_config([*base, "sampler=unipc", "spacing=karras"], tmp_path / "ok"))
    import json

    assert json.loads((res["run_dir"] / "samples.json").read_text())["spacing"] == "karras"
