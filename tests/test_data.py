"""Behaviour of rockgen.data: decoding rules, file discovery, tile datasets, train/val split, the DataModule.

Images are written into ``tmp_path`` with Pillow (no shared data); pixel values are checked, not only shapes.
"""

from __future__ import annotations

import pickle
import struct
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rockgen.data import (
    XYZ,
    CorruptImageWarning,
    ImageReadError,
    NoImagesFoundError,
    TileDataModule,
    TileDataset,
    find_images,
    load_rgb,
    parse_xyz,
    split_files,
)
from rockgen.data.tiles import xyz_block_groups


def save(path: Path, array_or_image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    im.save(path, **kwargs)
    return path


def rgb_ramp(h: int, w: int) -> np.ndarray:
    """A uint8 (h, w, 3) image whose pixels encode their position: R = row, G = column, B = 7."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy % 256, xx % 256, np.full_like(yy, 7)], -1).astype(np.uint8)


def write_rgb16_tiff(path: Path, arr: np.ndarray) -> Path:
    """Minimal uncompressed little-endian 16-bit RGB TIFF (Pillow reads these but cannot write them)."""
    h, w, _ = arr.shape
    data = arr.astype("<u2").tobytes()
    n, ifd = 10, 8
    bps_at = ifd + 2 + n * 12 + 4
    data_at = bps_at + 6

    def entry(tag, typ, value):
        return struct.pack("<HHIHH", tag, 3, 1, value, 0) if typ == 3 else struct.pack("<HHII", tag, 4, 1, value)

    entries = [entry(256, 4, w), entry(257, 4, h), struct.pack("<HHII", 258, 3, 3, bps_at), entry(259, 3, 1)]
    entries += [entry(262, 3, 2), entry(273, 4, data_at), entry(277, 3, 3), entry(278, 4, h)]
    entries += [entry(279, 4, len(data)), entry(284, 3, 1)]
    blob = b"II*\x00" + struct.pack("<IH", ifd, n) + b"".join(entries) + struct.pack("<I", 0)
    path.write_bytes(blob + struct.pack("<HHH", 16, 16, 16) + data)
    return path


# ------------------------------------------------------------------------------------------ conversion rules
def test_rgb_formats_decode_to_the_stored_pixels(tmp_path):
    img = rgb_ramp(16, 24)
    for name, kw in [("a.png", {}), ("a.webp", {"lossless": True}), ("a.tif", {}), ("a.TIFF", {})]:
        out = load_rgb(save(tmp_path / name, img, **kw))
        assert out.dtype == np.uint8 and out.shape == (16, 24, 3)
        np.testing.assert_array_equal(out, img, err_msg=name)


def test_jpeg_and_cmyk_decode_to_rgb(tmp_path):
    flat = np.full((16, 16, 3), (180, 90, 40), np.uint8)
    out = load_rgb(save(tmp_path / "a.jpg", flat, quality=95))
    assert np.abs(out.astype(int) - (180, 90, 40)).max() <= 3
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in naive CMYK
    out = load_rgb(save(tmp_path / "c.jpeg", cmyk, quality=100))
    assert out.shape == (8, 8, 3) and out[..., 0].min() > 240 and out[..., 1:].max() < 15


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque: unchanged
    rgba[0, 1] = (200, 100, 50, 128)  # half: (c * 128 + 127) // 255
    rgba[1, 0] = (200, 100, 50, 0)  # transparent nodata: black
    out = load_rgb(save(tmp_path / "a.png", rgba))
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[0, 1].tolist() == [100, 50, 25]
    assert out[1, 0].tolist() == [0, 0, 0]
    assert load_rgb(tmp_path / "a.png", background=(255, 255, 255))[1, 0].tolist() == [255, 255, 255]
    la = Image.fromarray(np.array([[[90, 255], [90, 0]]], np.uint8), mode="LA")
    assert load_rgb(save(tmp_path / "la.png", la)).tolist() == [[[90, 90, 90], [0, 0, 0]]]


def test_grey_and_palette_with_transparency(tmp_path):
    grey = np.array([[0, 77, 255]], np.uint8)
    np.testing.assert_array_equal(load_rgb(save(tmp_path / "l.png", grey)), np.repeat(grey[..., None], 3, 2))
    pal = Image.new("P", (3, 1))
    pal.putpalette([10, 20, 30, 200, 150, 100, 0, 0, 0] + [0] * (253 * 3))
    pal.putdata([0, 1, 2])
    pal.info["transparency"] = 1  # palette entry 1 is transparent
    out = load_rgb(save(tmp_path / "p.png", pal, transparency=1))
    assert out.tolist() == [[[10, 20, 30], [0, 0, 0], [0, 0, 0]]]
    pal_opaque = pal.copy()
    pal_opaque.info.pop("transparency")
    assert load_rgb(save(tmp_path / "q.png", pal_opaque))[0, 1].tolist() == [200, 150, 100]


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_grey_uses_the_full_range_by_default(tmp_path, ext):
    v = np.array([[0, 257, 32768, 65535, 1000]], np.uint16)
    path = save(tmp_path / f"g16.{ext}", v)
    assert Image.open(path).mode == "I;16"
    out = load_rgb(path)
    assert out[..., 0].tolist() == [[0, 1, 128, 255, 4]]  # round(v * 255 / 65535)
    assert (out == out[..., :1]).all()
    # per-image stretch and an explicit 12-bit range are options
    assert load_rgb(path, rescale="minmax")[0, :, 0].tolist() == [0, 1, 128, 255, 4]
    assert load_rgb(path, rescale=(0, 4095))[0, :, 0].tolist() == [0, 16, 255, 255, 62]
    dark = save(tmp_path / f"dark.{ext}", np.array([[1000, 2000]], np.uint16))
    assert load_rgb(dark)[0, :, 0].tolist() == [4, 8]  # comparable with other tiles
    assert load_rgb(dark, rescale="minmax")[0, :, 0].tolist() == [0, 255]


def test_float_and_16bit_rgb_tiffs(tmp_path):
    f = save(tmp_path / "f.tif", np.array([[0.0, 0.5, 1.0, 2.0]], np.float32))
    assert load_rgb(f)[0, :, 0].tolist() == [0, 128, 255, 255]
    arr = np.array([[[0, 65535, 32768], [1000, 50000, 257]]], np.uint16)
    out = load_rgb(write_rgb16_tiff(tmp_path / "rgb16.tif", arr))
    assert out.tolist() == (arr >> 8).tolist()  # Pillow keeps the high byte
    stretched = load_rgb(tmp_path / "rgb16.tif", rescale="minmax")  # then applied to the 8-bit values
    assert stretched.tolist() == [[[0, 255, 128], [3, 195, 1]]]
    arr2 = np.array([[[1000, 2000, 3000]]], np.uint16)
    assert load_rgb(write_rgb16_tiff(tmp_path / "b.tif", arr2), rescale="minmax").tolist() == [[[0, 128, 255]]]


def test_unreadable_file_raises_image_read_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.png") as info:
        load_rgb(bad)
    assert info.value.path == str(bad)
    assert pickle.loads(pickle.dumps(info.value)).path == str(bad)  # crosses DataLoader workers


# ------------------------------------------------------------------------------------------ discovery
def test_find_images_is_recursive_sorted_and_case_insensitive(tmp_path):
    tiny = np.zeros((4, 4, 3), np.uint8)
    for rel in ["b/z.PNG", "a/y.jpg", "a/deep/x.Tif", "c.webp", "skip.txt", ".hidden/h.png", "a/._m.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"") if rel.endswith(".txt") else save(tmp_path / rel, tiny)
    rels = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert rels == ["a/deep/x.Tif", "a/y.jpg", "b/z.PNG", "c.webp"]
    assert [p.name for p in find_images(tmp_path, extensions=[".png"])] == ["z.PNG"]


def test_xyz_zoom_filter_keeps_only_that_zoom(tmp_path):
    tiny = np.zeros((4, 4, 3), np.uint8)
    for rel in ["23/100/200.png", "23/100/201.jpg", "22/50/100.png", "23/a/1.png", "23/100/1/2.png", "x.png"]:
        save(tmp_path / rel, tiny)
    found = find_images(tmp_path, zoom=23)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["23/100/200.png", "23/100/201.jpg"]
    assert len(find_images(tmp_path)) == 6
    assert parse_xyz("23/100/200.png") == XYZ(23, 100, 200)
    assert parse_xyz("x.png") is None and parse_xyz("23/a/1.png") is None


def test_empty_folder_error_names_path_extensions_and_zoom(tmp_path):
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(NoImagesFoundError) as info:
        find_images(tmp_path, zoom=23)
    msg = str(info.value)
    assert str(tmp_path) in msg and "'png'" in msg and "'webp'" in msg and "zoom == 23" in msg


# ------------------------------------------------------------------------------------------ tiles
def test_grid_random_and_center_counts(tmp_path):
    big = save(tmp_path / "big.png", rgb_ramp(70, 130))  # 4 x 2 tiles of 32 (margins 1 and 3)
    small = save(tmp_path / "small.png", rgb_ramp(20, 40))
    files = [big, small]
    assert len(TileDataset(files, 32, mode="grid")) == 8 + 1
    assert len(TileDataset(files, 32, mode="random_crop")) == 8 + 1  # an epoch ~ the grid's pixel count
    assert len(TileDataset(files, 32, mode="random_crop", crops_per_file=3)) == 6
    assert len(TileDataset(files, 32, mode="center_crop")) == 2


def test_grid_tiles_are_the_centred_non_overlapping_windows(tmp_path):
    ds = TileDataset([save(tmp_path / "big.png", rgb_ramp(70, 130))], 32, mode="grid")
    expected = rgb_ramp(70, 130)
    for i in range(len(ds)):
        left, top, right, bottom = ds.item_box(i)
        assert (left, top) == (1 + (i % 4) * 32, 3 + (i // 4) * 32)
        item = ds[i]
        assert item["index"] == i and item["source"] == 0
        want = torch.from_numpy(expected[top:bottom, left:right].transpose(2, 0, 1).copy()).float() / 127.5 - 1
        assert torch.equal(item["img"], want)


def test_random_crops_are_windows_of_the_source(tmp_path):
    ds = TileDataset([save(tmp_path / "big.png", rgb_ramp(70, 130))], 32, mode="random_crop")
    torch.manual_seed(0)
    corners = set()
    for i in range(len(ds)):
        img = ((ds[i]["img"] + 1) * 127.5).round().to(torch.int64)
        top, left = int(img[0, 0, 0]), int(img[1, 0, 0])  # R = row, G = column of the top-left pixel
        assert torch.equal(img[0, :, 0], torch.arange(top, top + 32)) and top + 32 <= 70 and left + 32 <= 130
        corners.add((top, left))
    assert len(corners) > 1


def test_small_image_is_resized_then_centre_cropped(tmp_path):
    ds = TileDataset([save(tmp_path / "s.png", np.full((20, 40, 3), 99, np.uint8))], 32, mode="random_crop")
    assert len(ds) == 1 and ds.item_box(0) is None
    x = ds[0]["img"]
    assert x.shape == (3, 32, 32) and torch.allclose(x, torch.full_like(x, 99 / 127.5 - 1), atol=1e-6)


def test_value_range_maps_0_to_minus_1_and_255_to_1(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, 4:] = 255
    x = TileDataset([save(tmp_path / "bw.png", img)], 8, mode="center_crop")[0]["img"]
    assert x.dtype == torch.float32 and x.shape == (3, 8, 8)
    assert (x[:, :, :4] == -1).all() and (x[:, :, 4:] == 1).all()


@pytest.mark.parametrize(
    "key, allowed",
    [
        ("hflip", lambda x: [x, x.flip(-1)]),
        ("vflip", lambda x: [x, x.flip(-2)]),
        ("rot90", lambda x: [torch.rot90(x, k, (-2, -1)) for k in range(4)]),
    ],
)
def test_each_augmentation_toggles_on_its_own(tmp_path, key, allowed):
    path = save(tmp_path / "r.png", rgb_ramp(16, 16))
    plain = TileDataset([path], 16, mode="center_crop")[0]["img"]
    assert torch.equal(TileDataset([path], 16, mode="center_crop", augment={key: False})[0]["img"], plain)
    ds = TileDataset([path], 16, mode="center_crop", augment={key: True})
    torch.manual_seed(0)
    seen = set()
    for _ in range(24):
        x = ds[0]["img"]
        matches = [j for j, y in enumerate(allowed(plain)) if torch.equal(x, y)]
        assert matches, f"{key} produced a transform other than {key}"
        seen.add(matches[0])
    assert len(seen) == len(allowed(plain))
    with pytest.raises(ValueError, match="unknown augment keys"):
        TileDataset([path], 16, augment={"rotate": True})


def test_corrupt_file_is_skipped_with_one_warning_or_raises_when_strict(tmp_path):
    good = [save(tmp_path / f"g{i}.png", rgb_ramp(16, 16)) for i in range(3)]
    bad1, bad2 = tmp_path / "bad1.png", tmp_path / "bad2.jpg"
    bad1.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    bad2.write_bytes(b"")
    files = [good[0], bad1, good[1], bad2, good[2]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = TileDataset(files, 16, mode="grid")
        for _ in range(2):  # two "epochs": no further warnings
            [ds[i] for i in range(len(ds))]
    ours = [w for w in caught if issubclass(w.category, CorruptImageWarning)]
    assert len(ours) == 1 and "bad1.png" in str(ours[0].message) and "bad2.jpg" in str(ours[0].message)
    assert len(ds) == 3 and ds.files == [str(p) for p in good]
    with pytest.raises(ImageReadError, match="bad1.png"):
        TileDataset(files, 16, mode="grid", strict=True)


def test_late_decode_failure_substitutes_the_next_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    paths = [save(tmp_path / f"{i}.jpg", noise // (i + 1)) for i in range(3)]
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) * 3 // 4])  # truncated mid-scan: verify() passes, decoding fails
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = TileDataset(paths, 64, mode="center_crop")
        assert len(ds) == 3
        items = [ds[i] for i in range(3)] + [ds[1]]
    assert [it["index"] for it in items] == [0, 1, 2, 1] and [it["source"] for it in items] == [0, 2, 2, 2]
    assert sum(issubclass(w.category, CorruptImageWarning) for w in caught) == 1
    with pytest.raises(ImageReadError, match="1.jpg"):
        TileDataset(paths, 64, mode="center_crop", strict=True)[1]


def test_dataset_pickles_without_decoded_pixels(tmp_path):
    ds = TileDataset([save(tmp_path / "a.png", rgb_ramp(64, 64))], 16, mode="grid")
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._cache is None and torch.equal(clone[5]["img"], ds[5]["img"])


# ------------------------------------------------------------------------------------------ split
def test_split_by_source_file_is_deterministic_disjoint_and_portable(tmp_path):
    names = [f"site{i % 3}/img_{i:03d}.png" for i in range(40)]
    a = [tmp_path / "copy_a" / n for n in names]
    b = [tmp_path / "elsewhere" / "copy_b" / n for n in names]
    train, val = split_files(a, 0.2, seed=0)
    assert len(val) == 8 and set(train).isdisjoint(val) and set(train) | set(val) == set(a)
    assert split_files(a, 0.2, seed=0) == (train, val)
    assert split_files(list(reversed(a)), 0.2, seed=0)[1] == list(reversed(val))  # order-independent choice
    val_b = split_files(b, 0.2, seed=0)[1]  # same relative paths elsewhere: same split
    assert [p.relative_to(tmp_path / "elsewhere" / "copy_b") for p in val_b] == [
        p.relative_to(tmp_path / "copy_a") for p in val
    ]
    assert split_files(a, 0.2, seed=1)[1] != val
    assert len(split_files(a[:2], 0.01)[1]) == 1 and split_files(a[:1], 0.5)[1] == []
    assert split_files(a, 0.0)[1] == []


def test_split_keeps_neighbouring_xyz_tiles_together():
    keys = [f"23/{x}/{y}.png" for x in range(16) for y in range(16)]
    groups = xyz_block_groups(keys, 8)
    assert len(set(groups)) == 4
    _, val = split_files(keys, 0.3, root=".", groups=groups)
    assert len(val) == 64 and len({g for k, g in zip(keys, groups, strict=True) if k in val}) == 1


# ------------------------------------------------------------------------------------------ datamodule
@pytest.fixture
def folder(tmp_path) -> Path:
    for label, shade in [("basalt", 40), ("chalk", 220)]:
        for i in range(5):
            save(tmp_path / "data" / label / f"{i}.png", np.full((40, 72, 3), shade + i, np.uint8))
    return tmp_path / "data"


def test_datamodule_train_val_predict(folder):
    dm = TileDataModule(root=str(folder), image_size=32, batch_size=4, num_workers=0, val_fraction=0.2)
    dm.setup("fit")
    assert len(dm.val_files) == 2 and set(dm.train_files).isdisjoint(dm.val_files)
    assert dm.val_set.files == dm.val_files and len(dm.train_files) == 8
    batch = next(iter(dm.train_dataloader()))
    assert batch["img"].shape == (4, 3, 32, 32) and batch["img"].dtype == torch.float32
    assert len(dm.train_dataloader()) == (8 * 2) // 4  # 2 grid tiles per 40 x 72 file, drop_last
    val = [b["index"].tolist() for b in dm.val_dataloader()]
    assert val == [b["index"].tolist() for b in dm.val_dataloader()]  # deterministic
    dm.setup("predict")
    order = torch.cat([b["index"] for b in dm.predict_dataloader()]).tolist()
    assert order == list(range(10))  # crop="random" -> one centre crop per file, all files
    assert dm.labels() == ["basalt"] * 5 + ["chalk"] * 5
    assert dm.predict_paths() == dm.files and dm.predict_sources() == list(range(10))


def test_datamodule_grid_predict_maps_items_to_files(folder):
    dm = TileDataModule(root=str(folder), image_size=32, batch_size=2, num_workers=0, crop="grid")
    dm.setup("predict")
    assert len(dm.predict_set) == 20 and dm.predict_sources()[:4] == [0, 0, 1, 1]
    assert dm.predict_paths()[2] == dm.files[1]


def test_global_batch_is_split_by_world_size(folder):
    dm = TileDataModule(root=str(folder), image_size=32, batch_size=8, val_batch_size=4, num_workers=0)
    dm.trainer = SimpleNamespace(world_size=2)
    dm.setup("fit")
    assert dm.per_rank_batch_size == 4 and dm.per_rank_val_batch_size == 2
    dm = TileDataModule(root=str(folder), image_size=32, batch_size=6, num_workers=0)
    dm.trainer = SimpleNamespace(world_size=4)
    with pytest.raises(ValueError, match=r"data\.batch_size=6.*world size 4"):
        dm.setup("fit")


def test_datamodule_empty_root_names_the_filter(tmp_path):
    dm = TileDataModule(root=str(tmp_path), zoom=23, extensions=["png"], num_workers=0)
    with pytest.raises(NoImagesFoundError, match=r"\['png'\].*zoom == 23"):
        dm.setup("fit")
