"""task=mosaic / task=inpaint settings: sizes in metres at a zoom, and bad input refused before any work."""

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from rockgen.tasks.gis_output import pixel_size_m
from rockgen.tasks.inpaint import inpaint_task
from rockgen.tasks.mosaic import _codes, mosaic_size, mosaic_task


def _cfg(tmp_path, **kw):
    base = dict(ckpt_path="model.ckpt", width=128, height=64, units="px", zoom=23, window=32, overlap=8,
                window_batch=4, T=5, T_latent=5, z_sem="shared", z_image=None, anchor_every=4, seed=0,
                overwrite=False, output="png", x=0, y=0, paths={"run_dir": str(tmp_path / "run")})  # fmt: skip
    base.update(kw)
    return OmegaConf.create(base)


def test_pixel_size_matches_morecantile():
    morecantile = pytest.importorskip("morecantile")
    tms = morecantile.tms.get("WebMercatorQuad")
    for z in (0, 10, 23, 30):
        assert pixel_size_m(z) == pytest.approx(tms.matrix(z).cellSize, rel=1e-12)


def test_metres_at_zoom(tmp_path):
    px = pixel_size_m(23)
    assert mosaic_size(_cfg(tmp_path, units="m", width=100 * px, height=50 * px)) == (50, 100)


@pytest.mark.parametrize("zoom", [-1, 31, 2.5])
def test_zoom_out_of_range(tmp_path, zoom):
    with pytest.raises(ValueError, match="zoom must be an integer in 0..30"):
        mosaic_size(_cfg(tmp_path, units="m", zoom=zoom))


@pytest.mark.parametrize(
    ("kw", "msg"), [({"width": 16}, "smaller than one window"), ({"overlap": 32}, "overlap must be")]
)
def test_bad_mosaic_layout_before_loading(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):  # the checkpoint 'model.ckpt' does not exist: never read
        mosaic_task(_cfg(tmp_path, **kw))


def test_existing_output_refused_unless_overwrite(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "mosaic.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        mosaic_task(_cfg(tmp_path))
    (run / "inpainted.png").write_bytes(b"x")
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    m = Image.new("L", (40, 40))
    m.putpixel((3, 3), 255)
    m.save(tmp_path / "m.png")
    cfg = _cfg(tmp_path, image=str(tmp_path / "a.png"), mask=str(tmp_path / "m.png"), resample=1)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        inpaint_task(cfg)
    Image.new("L", (40, 30)).save(tmp_path / "m2.png")
    with pytest.raises(ValueError, match="same size"):
        inpaint_task(_cfg(tmp_path, image=str(tmp_path / "a.png"), mask=str(tmp_path / "m2.png"), resample=1))


def test_field_needs_a_latent_stage(tmp_path):
    model = SimpleNamespace(has_latent=False)
    mosaic = SimpleNamespace(origins=[(0, 0)] * 4, grid=(2, 2))
    with pytest.raises(ValueError, match="template=<res>_latent"):
        _codes(model, _cfg(tmp_path, z_sem="field"), mosaic, None)
    with pytest.raises(ValueError, match="z_sem must be shared or field"):
        _codes(model, _cfg(tmp_path, z_sem="grid"), mosaic, None)


def test_geotiff_bounds_and_pixel_size_match_the_tile(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    morecantile = pytest.importorskip("morecantile")
    import numpy as np

    from rockgen.gis import write_geotiff

    z, x, y = 23, 4194304 + 1234, 2796203 - 77  # a zoom-23 tile near 0°E, 45°N
    img = np.random.default_rng(0).integers(0, 255, (512, 256, 3), dtype=np.uint8)  # 2 tiles high, 1 wide
    path = write_geotiff(tmp_path / "m.tif", img, z, x, y)
    b = morecantile.tms.get("WebMercatorQuad").xy_bounds(morecantile.Tile(x, y, z))
    below = morecantile.tms.get("WebMercatorQuad").xy_bounds(morecantile.Tile(x, y + 1, z))
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 3857
        assert src.res[0] == pytest.approx(pixel_size_m(23), rel=1e-9)
        assert src.bounds.left == pytest.approx(b.left, abs=1e-6) and src.bounds.top == pytest.approx(b.top, abs=1e-6)
        assert src.bounds.right == pytest.approx(b.right, abs=1e-6)
        assert src.bounds.bottom == pytest.approx(below.bottom, abs=1e-6)
        assert np.array_equal(src.read(), np.moveaxis(img, 2, 0))
    with pytest.raises(FileExistsError, match="overwrite=true"):
        write_geotiff(path, img, z, x, y)
    with pytest.raises(ValueError, match="outside zoom"):
        write_geotiff(tmp_path / "n.tif", img, 2, 4, 0)
    with pytest.raises(ValueError, match="zoom must be"):
        mosaic_task(_cfg(tmp_path, output="geotiff", zoom=31))
