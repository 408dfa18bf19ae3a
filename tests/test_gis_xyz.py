"""output=xyz: the {z}/{x}/{y}.png pyramid (tile names against morecantile and the GeoTIFF, levels against a
float64 average of the finer level), bad input, and the Leaflet viewer rendered by headless Chromium."""

from __future__ import annotations

import functools
import http.server
import json
import math
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

pytest.importorskip("rasterio", reason="output=xyz needs the 'geo' extra (rasterio, morecantile)")
morecantile = pytest.importorskip("morecantile", reason="output=xyz needs the 'geo' extra (rasterio, morecantile)")

from rockgen.gis import write_geotiff  # noqa: E402
from rockgen.tasks.gis_output import GisOutputs, output_kinds  # noqa: E402
from rockgen.tasks.mosaic import mosaic_task  # noqa: E402
from rockgen.xyz import default_min_zoom, downsample_rgba, write_xyz  # noqa: E402

TMS = morecantile.tms.get("WebMercatorQuad")
Z, X, Y = 23, 4194304 + 1235, 2796203 - 78  # an odd tile column and row: coarser levels start mid-tile
H, W = 300, 600  # not multiples of 256: partial edge tiles
QUADS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220), "yellow": (230, 220, 40)}


def _quadrants() -> np.ndarray:
    """(H, W, 3) uint8: four flat colours plus a little noise (so averaging is not trivially exact)."""
    img = np.empty((H, W, 3), np.uint8)
    for (r, c), rgb in zip([(0, 0), (0, 1), (1, 0), (1, 1)], QUADS.values(), strict=True):
        img[r * H // 2 : (r + 1) * H // 2, c * W // 2 : (c + 1) * W // 2] = rgb
    noise = np.random.default_rng(0).integers(-8, 9, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """The quadrant image as a GeoTIFF and as an XYZ pyramid z23..18 from the same tile."""
    root = tmp_path_factory.mktemp("xyz")
    img = _quadrants()
    tif = write_geotiff(root / "m.tif", img, Z, X, Y)
    info = write_xyz(root / "xyz", img, Z, X, Y, min_zoom=18)
    return {"root": root, "img": img, "tif": tif, "dir": root / "xyz", "info": info}


def _written(folder: Path, z: int) -> set[tuple[int, int]]:
    return {(int(p.parent.name), int(p.stem)) for p in (folder / str(z)).glob("*/*.png")}


def _level(folder: Path, z: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Tiles x0..x1, y0..y1 of level z as one (…, …, 4) float64 RGBA canvas; missing tiles transparent."""
    out = np.zeros(((y1 - y0 + 1) * 256, (x1 - x0 + 1) * 256, 4))
    for ty in range(y0, y1 + 1):
        for tx in range(x0, x1 + 1):
            p = folder / str(z) / str(tx) / f"{ty}.png"
            if p.exists():
                with Image.open(p) as im:
                    out[(ty - y0) * 256 : (ty - y0 + 1) * 256, (tx - x0) * 256 : (tx - x0 + 1) * 256] = np.asarray(
                        im.convert("RGBA"), dtype=np.float64
                    )
    return out


def test_tiles_per_level_are_those_morecantile_finds_over_the_geotiff(pyramid):
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(pyramid["tif"]) as src:
        b = src.bounds
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *b)
    eps = 1e-9  # degrees (a zoom-23 pixel is ~1.7e-7°): stay off the tile edges the bounds lie on
    assert pyramid["info"]["tiles"] == {z: len(_written(pyramid["dir"], z)) for z in range(18, 24)}
    for z in range(18, 24):
        expected = {(t.x, t.y) for t in TMS.tiles(west + eps, south + eps, east - eps, north - eps, [z])}
        assert _written(pyramid["dir"], z) == expected, f"zoom {z}"
        xs, ys = zip(*expected, strict=True)
        ul, lr = (
            TMS.xy_bounds(morecantile.Tile(min(xs), min(ys), z)),
            TMS.xy_bounds(morecantile.Tile(max(xs), max(ys), z)),
        )
        px = 2 * math.pi * 6378137 / (256 * 2**z)
        assert (ul.right - ul.left) / 256 == pytest.approx(px, rel=1e-9)  # float64 differences of ~2e7 m
        # the written tiles' union is the GeoTIFF's extent rounded out to whole tiles
        assert ul.left <= b.left + 1e-6 and ul.top >= b.top - 1e-6 and lr.right >= b.right - 1e-6
        assert lr.bottom <= b.bottom + 1e-6 and ul.left > b.left - px * 256 and lr.right < b.right + px * 256
        # alpha: opaque over the GeoTIFF's extent, transparent outside it (edge pixels of coarse levels: partial)
        alpha = _level(pyramid["dir"], z, min(xs), min(ys), max(xs), max(ys))[..., 3]
        cx = ul.left + (np.arange(alpha.shape[1]) + 0.5) * px  # pixel centres, EPSG:3857 metres
        cy = ul.top - (np.arange(alpha.shape[0]) + 0.5) * px
        inside = ((cy[:, None] > b.bottom + px) & (cy[:, None] < b.top - px)) & (
            (cx[None] > b.left + px) & (cx[None] < b.right - px)
        )
        outside = (cy[:, None] < b.bottom - px) | (cy[:, None] > b.top + px) | (cx[None] < b.left - px)
        outside |= cx[None] > b.right + px
        assert (alpha[inside] == 255).all() and (alpha[outside] == 0).all(), f"zoom {z}"


def test_native_level_holds_the_geotiff_pixels_and_pads_edges_transparent(pyramid):
    import rasterio

    with rasterio.open(pyramid["tif"]) as src:
        data = np.moveaxis(src.read(), 0, 2)
    canvas = _level(pyramid["dir"], Z, X, Y, X + 2, Y + 1)  # 600x300 -> 3x2 tiles
    assert np.array_equal(canvas[:H, :W, :3], data) and (canvas[:H, :W, 3] == 255).all()
    assert (canvas[H:, :, 3] == 0).all() and (canvas[:, W:, 3] == 0).all()
    with (
        Image.open(pyramid["dir"] / str(Z) / str(X) / f"{Y}.png") as full,
        Image.open(pyramid["dir"] / str(Z) / str(X + 2) / f"{Y + 1}.png") as corner,
    ):
        assert (full.mode, full.size, corner.mode, corner.size) == ("RGB", (256, 256), "RGBA", (256, 256))


def test_each_coarser_level_is_the_float64_alpha_weighted_average_of_the_finer(pyramid):
    folder = pyramid["dir"]
    for z in range(18, Z):
        xs, ys = zip(*_written(folder, z), strict=True)
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        fine = _level(folder, z + 1, 2 * x0, 2 * y0, 2 * x1 + 1, 2 * y1 + 1)
        coarse = _level(folder, z, x0, y0, x1, y1)
        a = fine[..., 3:]
        sa = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, 1).sum(axis=(1, 3))
        sc = (fine[..., :3] * a).reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, 3).sum(axis=(1, 3))
        ref_rgb = np.divide(sc, sa, out=np.zeros_like(sc), where=sa > 0)
        assert np.abs(coarse[..., 3:] - sa / 4).max() <= 0.5, f"zoom {z} alpha"
        seen = (sa > 0)[..., 0]
        assert np.abs(coarse[..., :3][seen] - ref_rgb[seen]).max() <= 0.5 + 1e-9, f"zoom {z} colour"
        assert (coarse[~seen] == 0).all()


def test_downsample_rounds_the_float64_average_with_random_alpha():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 48, 4), dtype=np.uint8)
    a[:8, :8, 3] = 0  # fully transparent blocks
    a[8:16, :, 3] = rng.choice([0, 255], (8, 48))
    out = downsample_rgba(a).astype(float)
    f = a.astype(float)
    sa = f[..., 3:].reshape(32, 2, 24, 2, 1).sum(axis=(1, 3))
    sc = (f[..., :3] * f[..., 3:]).reshape(32, 2, 24, 2, 3).sum(axis=(1, 3))
    ref = np.divide(sc, sa, out=np.zeros_like(sc), where=sa > 0)
    assert np.abs(out[..., :3] - ref).max() <= 0.5 + 1e-9 and np.abs(out[..., 3:] - sa / 4).max() <= 0.5
    assert (out[:4, :4] == 0).all()
    with pytest.raises(ValueError, match="expects"):
        downsample_rgba(a[:3])


def test_default_min_zoom_is_the_level_where_the_mosaic_fits_a_tile():
    assert default_min_zoom(23, 256, 256) == 23
    assert default_min_zoom(23, 300, 600) == 21  # 600 px -> 300 -> 150
    assert default_min_zoom(2, 8192, 8192) == 0


def test_viewer_page_and_its_leaflet_are_local(pyramid):
    folder = pyramid["dir"]
    html = (folder / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # no CDN
    assert 'src="leaflet/leaflet.js"' in html and "L.CRS.EPSG3857" in html and '"{z}/{x}/{y}.png"' in html
    cfg = json.loads(html.split("const cfg = ", 1)[1].split(";\n", 1)[0])
    assert (cfg["minZoom"], cfg["nativeZoom"]) == (18, 23)
    (south, west), (north, east) = cfg["bounds"]
    assert west < east and south < north and TMS.tile(west + 1e-9, north - 1e-9, Z) == morecantile.Tile(X, Y, Z)
    for name in ("leaflet.js", "leaflet.css", "LICENSE", "images/layers.png"):
        assert (folder / "leaflet" / name).is_file(), name
    assert "BSD 2-Clause" in (folder / "leaflet" / "LICENSE").read_text()


def test_viewer_files_are_package_data():
    """pyproject's package-data patterns for rockgen.viewer match every file the viewer copies."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    pkg = root / "rockgen" / "viewer"
    shipped = {p for pat in patterns["rockgen.viewer"] for p in pkg.glob(pat)}
    needed = {p for p in pkg.rglob("*") if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}
    assert needed and needed <= shipped, sorted(str(p) for p in needed - shipped)


@pytest.mark.parametrize(("min_zoom", "msg"), [(24, "min_zoom must be"), (-1, "min_zoom must be"), (2.5, "min_zoom")])
def test_bad_min_zoom(tmp_path, min_zoom, msg):
    with pytest.raises(ValueError, match=msg):
        write_xyz(tmp_path / "x", np.zeros((8, 8, 3), np.uint8), Z, X, Y, min_zoom=min_zoom)
    with pytest.raises(ValueError, match=msg):  # refused before the (absent) checkpoint is read
        mosaic_task(_cfg(tmp_path, output="xyz", min_zoom=min_zoom))
    assert not (tmp_path / "x").exists()


def test_existing_pyramid_refused_unless_overwrite(tmp_path):
    img = np.full((300, 300, 3), 7, np.uint8)
    write_xyz(tmp_path / "xyz", img, Z, X, Y)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        write_xyz(tmp_path / "xyz", img, Z, X, Y)
    write_xyz(tmp_path / "xyz", img[:100, :100], Z, X, Y, overwrite=True)
    assert _written(tmp_path / "xyz", Z) == {(X, Y)}  # the larger run's tiles are gone
    (tmp_path / "run").mkdir()
    shutil.move(tmp_path / "xyz", tmp_path / "run" / "xyz")
    with pytest.raises(FileExistsError, match="xyz exists.*overwrite=true"):
        mosaic_task(_cfg(tmp_path, output=["geotiff", "xyz"]))


def test_output_settings(tmp_path):
    assert output_kinds("png") == {"png"} and output_kinds(OmegaConf.create(["geotiff", "xyz"])) == {"geotiff", "xyz"}
    for bad in ("jpeg", ["xyz", "tiles"], []):
        with pytest.raises(ValueError, match="output must be one of png|geotiff|xyz"):
            output_kinds(bad)
    with pytest.raises(ValueError, match="runs past the edge of zoom 3"):
        mosaic_task(_cfg(tmp_path, output="xyz", zoom=3, x=7, y=0, width=512))
    from conftest import compose_config

    cfg = compose_config(["task=mosaic", "output=[geotiff,xyz]", "min_zoom=20"], tmp_path)
    assert output_kinds(cfg.output) == {"geotiff", "xyz"} and cfg.min_zoom == 20


def test_png_only_checked_where_the_task_writes_it(tmp_path):
    # generate writes sheet.png only beside GIS files: output=png leaves an old sheet.png alone; mosaic always writes it
    (tmp_path / "sheet.png").write_bytes(b"old")
    cfg = OmegaConf.create({"output": "png"})
    assert GisOutputs.plan(cfg, tmp_path, "sheet", 64, 64, png_alone=False).paths() == {}
    with pytest.raises(FileExistsError, match="sheet.png exists"):
        GisOutputs.plan(cfg, tmp_path, "sheet", 64, 64)
    with pytest.raises(FileExistsError, match="sheet.png exists"):
        GisOutputs.plan(OmegaConf.create({"output": "geotiff", "zoom": Z, "x": X, "y": Y}), tmp_path, "sheet", 64, 64,
                        png_alone=False)  # fmt: skip
    assert (tmp_path / "sheet.png").read_bytes() == b"old"


def _cfg(tmp_path, **kw):
    base = dict(ckpt_path="model.ckpt", width=128, height=64, units="px", zoom=Z, window=32, overlap=8,
                window_batch=4, T=5, T_latent=5, z_sem="shared", z_image=None, anchor_every=4, seed=0,
                overwrite=False, output="png", x=X, y=Y, min_zoom=None,
                paths={"run_dir": str(tmp_path / "run")})  # fmt: skip
    base.update(kw)
    return OmegaConf.create(base)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")
def test_viewer_shows_the_tiles_in_headless_chromium(pyramid, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=pyramid["dir"]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    shot, netlog = tmp_path / "viewer.png", tmp_path / "net.json"
    try:
        subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={tmp_path / 'prof'}",
             "--window-size=800,600", "--virtual-time-budget=5000", f"--screenshot={shot}", f"--log-net-log={netlog}",
             f"{origin}/index.html"],
            check=True, timeout=120, capture_output=True,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = {
        e["params"]["url"]
        for e in log["events"]
        if names.get(e["type"]) == "URL_REQUEST_START_JOB" and e.get("params", {}).get("initiator") == origin
    }
    assert urls and all(u.startswith(origin) for u in urls), sorted(urls)  # nothing from a CDN
    tiles = {u for u in urls if u.endswith(".png") and "/leaflet/" not in u}
    assert tiles == {f"{origin}/{Z}/{x}/{y}.png" for x, y in _written(pyramid["dir"], Z)}  # fitted at native zoom
    with Image.open(shot) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=float)
    centres = {}
    for name, colour in QUADS.items():  # 1:1 at zoom 23: each quadrant is 300x150 screen pixels
        mask = (np.abs(rgb - colour) <= 12).all(axis=2)
        assert 0.9 * 300 * 150 <= mask.sum() <= 1.05 * 300 * 150, (name, int(mask.sum()), shot)
        centres[name] = np.argwhere(mask).mean(axis=0)  # (row, col)
    assert centres["red"][1] < centres["green"][1] and centres["red"][0] < centres["blue"][0]
    assert centres["yellow"][0] > centres["green"][0] and centres["yellow"][1] > centres["blue"][1]
    # and pixel for pixel: the map area that is not background is the mosaic at 1:1
    rows, cols = np.nonzero((np.abs(rgb - (0x1D, 0x26, 0x33)) > 3).any(axis=2)[80:-80, 80:-80])
    top, left = rows.min() + 80, cols.min() + 80
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (H, W)
    assert np.abs(rgb[top : top + H, left : left + W] - pyramid["img"]).mean() < 1.0
    print(f"screenshot: {shot}")
