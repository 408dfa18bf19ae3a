"""Large sources read by window (rockgen.data.rasters) and the data.fit rule: values checked against the arrays
written, rasterio's own window transform, and Pillow's Lanczos as the independent resize."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rockgen.data import NoImagesFoundError, TileDataModule, load_rgb
from rockgen.data.fit import fit_image, letterbox, pad_to
from rockgen.data.images import ImageReadError, ImageTooLargeError, SettingError

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402
from rasterio.windows import Window  # noqa: E402
from rasterio.windows import transform as window_transform  # noqa: E402

TRANSFORM = from_origin(500000.0, 6000000.0, 0.02, 0.02)


def write_tif(path: Path, data: np.ndarray, nodata=None, tiled=True, overviews=(), **kw) -> Path:
    """Write ``(bands, h, w)`` as a georeferenced GeoTIFF (UTM 33N, 2 cm pixels)."""
    count, h, w = data.shape
    opts = {"tiled": True, "blockxsize": 64, "blockysize": 64} if tiled else {}
    with rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=count, dtype=data.dtype, crs="EPSG:32633",
        transform=TRANSFORM, nodata=nodata, **opts, **kw,
    ) as ds:  # fmt: skip
        ds.write(data)
        if overviews:
            ds.build_overviews(list(overviews), rasterio.enums.Resampling.nearest)
    return path


def module(root, tmp_path, **kw) -> TileDataModule:
    kw = {"image_size": 32, "batch_size": 2, "num_workers": 0, "cache_dir": str(tmp_path / "cache"), **kw}
    return TileDataModule(root=str(root), **kw)


def as_uint8(x: torch.Tensor) -> np.ndarray:
    """Model range (3, S, S) in [-1, 1] back to uint8 (S, S, 3) (exact: v / 127.5 - 1 round-trips)."""
    return ((x.numpy().transpose(1, 2, 0) + 1.0) * 127.5).round().astype(np.uint8)


@pytest.mark.parametrize("tiled", [True, False])
def test_geotiff_grid_tiles_are_the_written_windows_with_their_georeference(tmp_path, tiled):
    data = np.random.default_rng(0).integers(0, 256, (3, 100, 130), dtype=np.uint8)
    path = write_tif(tmp_path / "ortho.tif", data, tiled=tiled)
    dm = module(path, tmp_path, crop="grid")
    dm.setup("predict")
    ds = dm.predict_set
    assert ds.rasters[0].kind == "geo" and len(ds) == 4 * 3  # 130 // 32 columns, 100 // 32 rows
    for i in (0, 5, 11):
        left, top, right, bottom = ds.item_box(i)
        assert (right - left, bottom - top) == (32, 32)
        np.testing.assert_array_equal(as_uint8(ds[i]["img"]), data[:, top:bottom, left:right].transpose(1, 2, 0))
        crs, transform = ds.item_georef(i)
        expected = window_transform(Window(left, top, 32, 32), TRANSFORM)
        assert "UTM zone 33N" in crs and np.allclose(transform, tuple(expected)[:6])
    assert pickle.loads(pickle.dumps(ds)).rasters[0]._handle is None  # workers open their own handle


def test_16bit_nodata_cells_skipped_and_values_rescaled_by_the_type_range(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 65000, (1, 96, 96), dtype=np.uint16)
    data[:, :40, :] = 65535  # nodata: the whole first row of 32-px cells and 8 rows of the second
    path = write_tif(tmp_path / "dem.tif", data, nodata=65535)
    dm = module(path, tmp_path, crop="grid", max_nodata_fraction=0.3)
    dm.setup("predict")
    ds = dm.predict_set
    assert ds.cells[0].tolist() == [3, 4, 5, 6, 7, 8]  # row 0 dropped (100 % nodata); row 1 has 25 %
    tile = as_uint8(ds[0]["img"])  # cell 3: rows 32..63, of which 32..39 are nodata
    expected = np.floor(data[0, 32:64, :32] * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    expected[:8] = 0  # nodata painted with the background colour
    np.testing.assert_array_equal(tile, np.repeat(expected[:, :, None], 3, axis=2))
    strict = module(path, tmp_path, crop="grid", max_nodata_fraction=0.05)
    strict.setup("predict")
    assert strict.predict_set.cells[0].tolist() == [6, 7, 8]


def test_random_windows_respect_max_nodata_fraction_and_split_by_blocks(tmp_path):
    data = np.full((3, 256, 256), 90, np.uint8)
    data[:, :, :100] = 0
    path = write_tif(tmp_path / "m.tif", data, nodata=0)
    dm = module(path, tmp_path, xyz_split_block=2, val_fraction=0.3, val_max_items=None)
    dm.setup("fit")
    train, val = dm.train_set, dm.val_set
    tr, va = set(train.cells[0].tolist()), set(val.cells[0].tolist())
    assert tr and va and not tr & va and tr | va == set(dm._cells[0].tolist())
    for i in range(len(train)):
        x = train[(i, 1000 + i)]["img"]
        assert (x == -1).all(dim=0).float().mean() <= 0.05  # nodata is painted black (-1)


def test_overview_level_reads_the_coarser_grid(tmp_path):
    data = np.random.default_rng(2).integers(1, 256, (3, 128, 128), dtype=np.uint8)
    path = write_tif(tmp_path / "o.tif", data, overviews=(2, 4))
    dm = module(path, tmp_path, crop="grid", overview=1)
    dm.setup("predict")
    assert (dm.predict_set.rasters[0].width, len(dm.predict_set)) == (64, 4)
    with pytest.raises(SettingError, match="data.overview=3"):
        module(path, tmp_path, overview=3).setup("predict")


def test_band_count_needs_data_bands(tmp_path):
    data = np.random.default_rng(3).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    path = write_tif(tmp_path / "multi.tif", data)
    with pytest.raises(SettingError, match=r"5 bands: set data.bands"):
        module(path, tmp_path).setup("predict")
    dm = module(path, tmp_path, crop="grid", bands=[3, 2, 1])
    dm.setup("predict")
    np.testing.assert_array_equal(as_uint8(dm.predict_set[0]["img"]), data[[2, 1, 0], :32, :32].transpose(1, 2, 0))


def test_truncated_geotiff_is_reported_by_name(tmp_path):
    data = np.random.default_rng(4).integers(0, 256, (3, 256, 256), dtype=np.uint8)
    path = write_tif(tmp_path / "cut.tif", data, compress="deflate")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NoImagesFoundError, match="cut.tif"):
        module(path, tmp_path).setup("fit")
    with pytest.raises(ImageReadError, match="cut.tif"):
        module(path, tmp_path, strict=True).setup("fit")


def test_all_nodata_and_smaller_than_a_tile_are_errors(tmp_path):
    empty = write_tif(tmp_path / "empty.tif", np.zeros((1, 64, 64), np.uint8), nodata=0)
    with pytest.raises(SettingError, match="data.max_nodata_fraction"):
        module(empty, tmp_path).setup("fit")
    small = write_tif(tmp_path / "small.tif", np.ones((3, 20, 50), np.uint8))
    with pytest.raises(SettingError, match=r"small.tif.*data.image_size=32"):
        module(small, tmp_path).setup("fit")


def test_over_max_image_pixels_names_the_setting(tmp_path):
    path = write_tif(tmp_path / "big.tif", np.ones((3, 64, 64), np.uint8))
    with pytest.raises(ImageTooLargeError, match="data.max_image_pixels=4000"):
        module(path, tmp_path, max_image_pixels=4000).setup("fit")
    Image.fromarray(np.ones((70, 70, 3), np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(ImageTooLargeError, match=r"photo.png.*data.max_image_pixels"):
        module(tmp_path / "photo.png", tmp_path, max_image_pixels=4000).setup("fit")


def test_large_jpeg_decoded_once_into_the_cache_and_read_by_window(tmp_path):
    rng = np.random.default_rng(5)
    img = rng.integers(40, 255, (200, 300, 3), dtype=np.uint8)
    img[:, :70] = 0  # black border of an exported mosaic
    Image.fromarray(img).save(tmp_path / "ortho.jpg", quality=95)
    decoded = load_rgb(tmp_path / "ortho.jpg")
    dm = module(tmp_path / "ortho.jpg", tmp_path, crop="grid", large_image_pixels=10_000)
    dm.setup("predict")
    ds = dm.predict_set
    raster = ds.rasters[0]
    assert raster.kind == "cache" and Path(raster.cache).is_file()
    left0, top0 = (300 - 9 * 32) // 2, (200 - 6 * 32) // 2
    # columns whose cell starts before x = 70 hold black border: 6 + 32k < 70 -> k = 0, 1 skipped; k = 2 is
    # 38..69 black -> 100 % nodata (JPEG ringing stays within the tolerance only in part, so no exact count)
    assert {c % 9 for c in ds.cells[0].tolist()} <= set(range(2, 9)) and {3, 4, 8} <= {c % 9 for c in ds.cells[0]}
    for i in range(0, len(ds), 7):
        left, top, right, bottom = ds.item_box(i)
        assert (left - left0) % 32 == 0 and (top - top0) % 32 == 0
        np.testing.assert_array_equal(as_uint8(ds[i]["img"]), decoded[top:bottom, left:right])
    mtime = Path(raster.cache).stat().st_mtime_ns
    again = module(tmp_path / "ortho.jpg", tmp_path, crop="grid", large_image_pixels=10_000)
    again.setup("predict")
    assert again.predict_set.rasters[0].cache == raster.cache and Path(raster.cache).stat().st_mtime_ns == mtime


def test_fit_resize_letterboxes_and_pad_keeps_native_pixels():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:] = (200, 100, 50)
    out = letterbox(img, 32, background=(1, 2, 3))
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[8:24], np.broadcast_to([200, 100, 50], (16, 32, 3)))  # 40x20 -> 32x16
    np.testing.assert_array_equal(out[:8], np.broadcast_to([1, 2, 3], (8, 32, 3)))
    rng = np.random.default_rng(6)
    photo = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(photo).resize((32, 21), Image.Resampling.LANCZOS))  # 90x60 -> 32x21.3
    np.testing.assert_array_equal(fit_image(photo, 32, "resize")[5:26], expected)
    padded = pad_to(photo[:10, :20], 32, background=(9, 9, 9))
    assert padded.shape == (32, 32, 3) and (padded[11:21, 6:26] == photo[:10, :20]).all() and padded[0, 0, 0] == 9
    assert fit_image(photo, 32, "pad") is photo  # larger images are never rescaled
    with pytest.raises(ValueError, match="data.fit"):
        fit_image(photo, 32, "stretch")


def test_fit_resize_gives_one_whole_item_per_photo(tmp_path):
    rng = np.random.default_rng(7)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (50, 120, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    dm = module(tmp_path, tmp_path, fit="resize", crop="grid", val_fraction=0.0)
    dm.setup("predict")
    assert len(dm.predict_set) == 3
    x = dm.predict_set[0]["img"]
    assert (x[:, :9] == -1).all() and (x[:, 9:22] != -1).any()  # 120x50 -> 32x13, black bands above/below
