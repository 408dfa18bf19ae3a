"""XYZ web-map pyramid ``{z}/{x}/{y}.png`` of a mosaic whose top-left corner is XYZ tile (x, y) at ``zoom``.

Level ``zoom`` holds the mosaic's own pixels cut into 256-px tiles; each coarser level down to ``min_zoom`` is
the finer level (as written) averaged over 2×2 pixel blocks, weighted by alpha (premultiplied area averaging:
a box filter, no ringing at the transparent border, and each level checkable against its finer one). Where the
mosaic does not fill a tile (its size is not a multiple of 256, or at coarser levels its origin falls inside a
tile) the tile is padded with transparent pixels and written as RGBA; full tiles are RGB. Tile indices and
bounds come from morecantile (WebMercatorQuad). A Leaflet ``index.html`` beside the tiles shows the pyramid
(``rockgen.viewer``). Needs the optional extra ``geo`` (``pip install 'rockgen[geo]'``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from rockgen.gis import _geo, tile_origin

TILE = 256  # px per XYZ tile side


def default_min_zoom(zoom: int, height: int, width: int) -> int:
    """The level at which the mosaic's longer side is at most one tile (256 px), clamped to 0."""
    return max(0, int(zoom) - max(0, math.ceil(math.log2(max(height, width) / TILE))))


def check_min_zoom(min_zoom, zoom: int) -> int:
    """``min_zoom`` as an int in 0..zoom, or a ValueError naming the setting."""
    if not isinstance(min_zoom, (int, float)) or int(min_zoom) != min_zoom or not 0 <= min_zoom <= int(zoom):
        raise ValueError(f"min_zoom must be an integer in 0..zoom (zoom={zoom}), got {min_zoom!r}")
    return int(min_zoom)


def check_placement(height: int, width: int, zoom: int, x: int, y: int) -> tuple[int, int]:
    """(tile rows, tile columns) of a mosaic at tile (x, y) of ``zoom``; a ValueError if it runs off the world."""
    ny, nx = math.ceil(height / TILE), math.ceil(width / TILE)
    if x + nx > 2**zoom or y + ny > 2**zoom:
        raise ValueError(
            f"a {width}x{height} px mosaic at tile x={x}, y={y} runs past the edge of zoom {zoom} "
            f"(tiles 0..{2**zoom - 1}): choose a smaller x / y"
        )
    return ny, nx


def downsample_rgba(a: np.ndarray) -> np.ndarray:
    """(2h, 2w, 4) uint8 RGBA -> (h, w, 4): 2×2 box average of alpha-premultiplied colour, rounded half up.

    colour = Σ c·α / Σ α (0 where Σ α = 0), α = Σ α / 4, over each 2×2 block; integer arithmetic, so exact.
    """
    if a.ndim != 3 or a.shape[2] != 4 or a.shape[0] % 2 or a.shape[1] % 2:
        raise ValueError(f"downsample_rgba expects (2h, 2w, 4), got {a.shape}")
    v = a.astype(np.int32)
    alpha = v[..., 3:]
    pre = v[..., :3] * alpha

    def box(t):
        return t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]

    sa, sc = box(alpha), box(pre)
    out = np.empty((a.shape[0] // 2, a.shape[1] // 2, 4), np.uint8)
    out[..., :3] = (2 * sc + sa) // np.maximum(2 * sa, 1)  # floor(Σcα/Σα + 1/2); Σcα = 0 when Σα = 0
    out[..., 3:] = (sa + 2) // 4
    return out


def _parent(canvas: np.ndarray, ul, tms) -> tuple[np.ndarray, object]:
    """The next coarser level: ``canvas`` (covering tiles from ``ul``) padded to whole parent tiles, then halved."""
    ny, nx = canvas.shape[0] // TILE, canvas.shape[1] // TILE
    lr = type(ul)(ul.x + nx - 1, ul.y + ny - 1, ul.z)
    pul, plr = tms.parent(ul)[0], tms.parent(lr)[0]
    # child tiles of the parents' rectangle that the finer level lacks: transparent
    left, top = ul.x - 2 * pul.x, ul.y - 2 * pul.y
    right, bottom = 2 * plr.x + 1 - lr.x, 2 * plr.y + 1 - lr.y
    padded = np.pad(canvas, ((top * TILE, bottom * TILE), (left * TILE, right * TILE), (0, 0)))
    out = np.empty((padded.shape[0] // 2, padded.shape[1] // 2, 4), np.uint8)
    for r in range(0, padded.shape[0], 2 * TILE):  # one parent tile row at a time bounds the int32 temporaries
        out[r // 2 : r // 2 + TILE] = downsample_rgba(padded[r : r + 2 * TILE])
    return out, pul


def _lnglat_bounds(tms, left: float, top: float, right: float, bottom: float) -> list[float]:
    """EPSG:3857 corners (m) -> [west, south, east, north] in degrees."""
    west, north = tms.lnglat(left, top)
    east, south = tms.lnglat(right, bottom)
    return [west, south, east, north]


def _save_tile(path: Path, tile: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opaque = bool((tile[..., 3] == 255).all())
    Image.fromarray(np.ascontiguousarray(tile[..., :3]) if opaque else tile, "RGB" if opaque else "RGBA").save(path)


def write_xyz(
    out_dir: str | Path,
    image: np.ndarray,
    zoom: int,
    x: int,
    y: int,
    min_zoom: int | None = None,
    overwrite: bool = False,
    title: str = "rockgen mosaic",
) -> dict:
    """Write ``image`` (H, W, 3) uint8 as tiles ``out_dir/{z}/{x}/{y}.png`` for z = zoom..min_zoom + index.html.

    The top-left pixel is the top-left corner of XYZ tile (x, y) at ``zoom``; ``min_zoom=None`` stops at the level
    where the mosaic is at most one tile wide. Returns zooms, tiles per level and the geographic bounds.
    """
    morecantile, _, _ = _geo()
    from rockgen.viewer import write_viewer

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"write_xyz expects (H, W, 3) uint8, got {image.shape} {image.dtype}")
    left, top, px = tile_origin(zoom, x, y)  # checks zoom and tile
    zoom, x, y = int(zoom), int(x), int(y)
    h, w = image.shape[:2]
    min_zoom = check_min_zoom(default_min_zoom(zoom, h, w) if min_zoom is None else min_zoom, zoom)
    ny, nx = check_placement(h, w, zoom, x, y)
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists: set overwrite=true to replace it")
        shutil.rmtree(out_dir)  # stale tiles of an earlier, larger mosaic must not survive

    tms = morecantile.tms.get("WebMercatorQuad")
    ul = morecantile.Tile(x, y, zoom)
    lr = morecantile.Tile(x + nx - 1, y + ny - 1, zoom)
    counts = {}
    for z in range(zoom, min_zoom - 1, -1):
        a, b = (ul, lr) if z == zoom else (tms.parent(ul, zoom=z)[0], tms.parent(lr, zoom=z)[0])
        counts[z] = (b.x - a.x + 1) * (b.y - a.y + 1)
    canvas = np.zeros((ny * TILE, nx * TILE, 4), np.uint8)
    canvas[:h, :w, :3], canvas[:h, :w, 3] = image, 255
    with tqdm(total=sum(counts.values()), desc=f"XYZ tiles z{zoom}..{min_zoom}", unit="tile") as bar:
        for z in range(zoom, min_zoom - 1, -1):
            for j in range(canvas.shape[0] // TILE):
                for i in range(canvas.shape[1] // TILE):
                    tile = canvas[j * TILE : (j + 1) * TILE, i * TILE : (i + 1) * TILE]
                    _save_tile(out_dir / str(z) / str(ul.x + i) / f"{ul.y + j}.png", tile)
                    bar.update()
            if z > min_zoom:
                canvas, ul = _parent(canvas, ul, tms)
    bounds = _lnglat_bounds(tms, left, top, left + w * px, top - h * px)
    inset = 0.01 * px  # metres: keeps Leaflet from asking for the neighbours of edge tiles after rounding
    tile_bounds = _lnglat_bounds(tms, left + inset, top - inset, left + w * px - inset, top - h * px + inset)
    write_viewer(out_dir, bounds, tile_bounds, min_zoom, zoom, title)
    return {"dir": str(out_dir), "zoom": zoom, "min_zoom": min_zoom, "tiles": counts, "bounds_lnglat": bounds}
