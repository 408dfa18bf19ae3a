"""LMDB tile shards (rockgen.data.shards) and task=convert: tiles, split and augmentation equal the folder's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from rockgen.data import TileDataModule
from rockgen.data.sampler import EpochSampler
from rockgen.data.shards import MANIFEST, ShardDataset, ShardError, write_shards
from rockgen.tasks.convert import convert

pytest.importorskip("lmdb")


def photo_folder(tmp_path, n=6):
    rng = np.random.default_rng(0)
    for i in range(n):
        size = (70 + 10 * i, 64 + 5 * i, 3)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(tmp_path / "src" / f"p{i}.png")
    return tmp_path / "src"


def run_convert(tmp_path, root, out, image_size=32, shard_tiles=7):
    data = {"_target_": "rockgen.data.TileDataModule", "root": str(root), "image_size": image_size, "fit": "crop"}
    data.update({"num_workers": 0, "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.34})
    cfg = OmegaConf.create({"data": data, "paths": {"run_dir": str(tmp_path / "run")}, "out": str(out)})
    cfg.shard_tiles = shard_tiles
    return convert(cfg)


@pytest.fixture
def converted(tmp_path):
    (tmp_path / "src").mkdir()
    root = photo_folder(tmp_path)
    result = run_convert(tmp_path, root, tmp_path / "shards")
    return root, tmp_path / "shards", result


def test_convert_writes_the_folders_grid_tiles_split_and_augmentation(tmp_path, converted):
    root, out, result = converted
    manifest = json.loads((out / MANIFEST).read_text())
    assert result["tiles"] == manifest["count"] and len(manifest["shards"]) == -(-manifest["count"] // 7)
    assert json.loads((tmp_path / "run" / "convert.json").read_text())["tiles"] == manifest["count"]
    kw = {"image_size": 32, "batch_size": 2, "num_workers": 0, "val_fraction": 0.34, "crop": "grid"}
    folder = TileDataModule(root=str(root), **kw)
    shards = TileDataModule(root=str(out), **kw)
    folder.setup("fit")
    shards.setup("fit")
    names = manifest["groups"]
    val_groups = {names[int(shards.val_set.group_ids[i])] for i in shards.val_set.indices}
    assert val_groups == {p.rsplit("/", 1)[-1] for p in folder.val_files}  # the same photos held out
    assert len(shards.train_set) == len(folder.train_set)
    for i in (0, 3, len(shards.train_set) - 1):  # grid order is file order: item i is the same tile
        a, b = shards.train_set[(i, 77 + i)]["img"], folder.train_set[(i, 77 + i)]["img"]
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # identical tile and identical D4 transform


def test_resumed_order_over_shards_is_the_tail_of_the_uninterrupted_one(converted):
    _, out, _ = converted
    ds = ShardDataset(out / MANIFEST, 32, augment={"hflip": True, "vflip": True, "rot90": True})
    whole = list(EpochSampler(ds, seed=3))
    resumed = EpochSampler(ds, seed=3)
    resumed.resume(epoch=0, samples=4)
    assert list(resumed) == whole[4:]
    torch.testing.assert_close(
        ds[whole[5]]["img"], ShardDataset(out / MANIFEST, 32, augment=ds.augment)[whole[5]]["img"]
    )


def test_truncated_shard_names_the_file(converted):
    _, out, _ = converted
    shard = out / "tiles-00001.lmdb"
    shard.write_bytes(shard.read_bytes()[:-5000])
    with pytest.raises(ShardError, match="tiles-00001.lmdb.*truncated"):
        TileDataModule(root=str(out), image_size=32, num_workers=0).setup("fit")


def test_corrupted_record_fails_its_crc(tmp_path):
    tiles = [(np.full((8, 8, 3), v, np.uint8), "g") for v in range(3)]
    manifest = write_shards(iter(tiles), tmp_path / "s", 8, total=3, progress=False)
    shard = tmp_path / "s" / "tiles-00000.lmdb"
    raw = bytearray(shard.read_bytes())
    at = raw.find(bytes([1]) * 192)  # the payload of tile 1
    raw[at + 10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    ds = ShardDataset(manifest, 8)
    assert (ds.tile(0) == 0).all() and (ds.tile(2) == 2).all()
    with pytest.raises(ShardError, match="record 1 fails its CRC"):
        ds.tile(1)


def test_shard_at_another_image_size_is_an_error(converted):
    _, out, _ = converted
    with pytest.raises(ShardError, match=r"32 px tiles but data.image_size=64"):
        TileDataModule(root=str(out), image_size=64, num_workers=0).setup("fit")


def test_convert_refuses_to_overwrite(tmp_path, converted):
    root, out, _ = converted
    with pytest.raises(ShardError, match="exists"):
        run_convert(tmp_path, root, out)
