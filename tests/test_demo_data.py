"""The embedded demo rocks: deterministic per seed, cached on disk, classes differing in simple statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rockgen.data import ROCK_TYPES, TileDataModule, generate_demo_tiles, make_demo_tile, write_demo_dataset

REQUIRED = {"cobbles", "layered", "fractured", "gravel"}


def test_required_rock_types_exist_and_make_uint8_rgb_tiles():
    assert REQUIRED <= set(ROCK_TYPES)
    for kind in ROCK_TYPES:
        tile = make_demo_tile(kind, 40, np.random.Generator(np.random.PCG64(0)))
        assert tile.dtype == np.uint8 and tile.shape == (40, 40, 3)
        assert 20 < tile.mean() < 235 and tile.std() > 5, kind  # neither blank nor saturated
    with pytest.raises(ValueError, match="unknown demo rock type"):
        make_demo_tile("marble", 40, np.random.Generator(np.random.PCG64(0)))


def test_tiles_are_deterministic_per_seed():
    for kind in ROCK_TYPES:
        a = generate_demo_tiles(kind, 2, 48, seed=3)
        assert a.tobytes() == generate_demo_tiles(kind, 2, 48, seed=3).tobytes()
        assert a.tobytes() != generate_demo_tiles(kind, 2, 48, seed=4).tobytes()
        assert not np.array_equal(a[0], a[1])
        # tile i does not depend on how many tiles are generated
        assert np.array_equal(generate_demo_tiles(kind, 1, 48, seed=3)[0], a[0])


def _features(tiles: np.ndarray) -> np.ndarray:
    """Per tile: mean, std, log gradient energy, colourfulness, dark fraction of the grey image."""
    grey = tiles.astype(np.float64).mean(-1)
    grad = (np.diff(grey, axis=1)[:, :, :-1] ** 2 + np.diff(grey, axis=2)[:, :-1, :] ** 2).mean((1, 2))
    chroma = (tiles.max(-1).astype(np.float64) - tiles.min(-1)).mean((1, 2))
    return np.stack([grey.mean((1, 2)), grey.std((1, 2)), np.log(grad), chroma, (grey < 60).mean((1, 2))], 1)


def test_classes_are_told_apart_by_trivial_statistics():
    kinds = sorted(ROCK_TYPES)
    train = {k: _features(generate_demo_tiles(k, 12, 64, seed=0)) for k in kinds}
    test = {k: _features(generate_demo_tiles(k, 12, 64, seed=1)) for k in kinds}
    allf = np.concatenate(list(train.values()))
    mu, sd = allf.mean(0), allf.std(0)
    centroids = np.stack([((train[k] - mu) / sd).mean(0) for k in kinds])
    correct = 0
    for i, k in enumerate(kinds):
        z = (test[k] - mu) / sd
        pred = ((z[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
        correct += int((pred == i).sum())
    assert correct / (12 * len(kinds)) >= 0.8  # nearest centroid on 5 numbers, held-out seed


def test_write_demo_dataset_layout_manifest_and_cache(tmp_path):
    out = write_demo_dataset(tmp_path / "demo", num_per_class=3, size=32, seed=7, classes=["gravel", "layered"])
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [f"{k}/{k}_{i:04d}.png" for k in ("gravel", "layered") for i in range(3)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["size"] == 32 and manifest["counts"] == {"gravel": 3, "layered": 3}
    assert "version" in manifest and len(manifest["pixel_sha256"]) == 64
    assert np.array_equal(
        np.asarray(Image.open(out / "gravel/gravel_0001.png")), generate_demo_tiles("gravel", 2, 32, 7)[1]
    )
    stamp = (out / "gravel/gravel_0000.png").stat().st_mtime_ns
    (out / "gravel/gravel_0000.png").write_bytes(b"tampered")
    write_demo_dataset(tmp_path / "demo", num_per_class=3, size=32, seed=7, classes=["gravel", "layered"])
    assert (out / "gravel/gravel_0000.png").read_bytes() == b"tampered"  # cache hit: nothing rewritten
    write_demo_dataset(tmp_path / "demo", num_per_class=3, size=32, seed=8, classes=["gravel", "layered"])
    assert (out / "gravel/gravel_0000.png").stat().st_mtime_ns != stamp  # another seed regenerates
    assert json.loads((out / "manifest.json").read_text())["seed"] == 8


def test_datamodule_without_root_uses_demo_rocks(tmp_path):
    dm = TileDataModule(
        root=None,
        demo_dir=str(tmp_path / "demo"),
        demo_num_per_class=4,
        demo_size=40,
        image_size=32,
        batch_size=4,
        num_workers=0,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(set(dm.labels())) == sorted(ROCK_TYPES)
    assert len(dm.files) == 4 * len(ROCK_TYPES) and len(dm.val_set) >= 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["img"].shape == (4, 3, 32, 32) and -1 <= batch["img"].min() and batch["img"].max() <= 1
