"""Georeferenced output: a mosaic as a Cloud-Optimised GeoTIFF in EPSG:3857 placed at an XYZ tile.

The mosaic's top-left pixel is the top-left corner of XYZ tile (``x``, ``y``) at ``zoom``, with the pixel size
of that zoom (256 px per tile: 2π·6378137/(256·2^zoom) m, ≈ 1.87 cm at zoom 23). Tile bounds come from
morecantile (WebMercatorQuad), the file is written by rasterio's COG driver (tiled, with overviews).
Needs the optional extra ``geo`` (``pip install 'rockgen[geo]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _geo():
    try:
        import morecantile
        import rasterio
        from rasterio.transform import from_origin
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError(f"output=geotiff/xyz need the 'geo' extra: pip install 'rockgen[geo]' ({e})") from e
    return morecantile, rasterio, from_origin


def tile_origin(zoom: int, x: int, y: int) -> tuple[float, float, float]:
    """(left, top, pixel size) in EPSG:3857 metres of XYZ tile (x, y) at ``zoom``."""
    morecantile, _, _ = _geo()
    if not 0 <= int(zoom) <= 30:
        raise ValueError(f"zoom must be an integer in 0..30 (XYZ levels), got {zoom}")
    n = 2 ** int(zoom)
    if not (0 <= int(x) < n and 0 <= int(y) < n):
        raise ValueError(f"tile x={x}, y={y} is outside zoom {zoom} (0..{n - 1})")
    tms = morecantile.tms.get("WebMercatorQuad")
    b = tms.xy_bounds(morecantile.Tile(int(x), int(y), int(zoom)))
    return b.left, b.top, (b.right - b.left) / 256


def write_geotiff(path: str | Path, image: np.ndarray, zoom: int, x: int, y: int, overwrite: bool = False) -> Path:
    """Write ``image`` (H, W, 3) uint8 as a COG in EPSG:3857 with its top-left at tile (x, y, zoom)."""
    _, rasterio, from_origin = _geo()
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: set overwrite=true to replace it")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"write_geotiff expects (H, W, 3) uint8, got {image.shape} {image.dtype}")
    left, top, px = tile_origin(zoom, x, y)
    h, w = image.shape[:2]
    profile = dict(driver="COG", width=w, height=h, count=3, dtype="uint8", crs="EPSG:3857",
                   transform=from_origin(left, top, px, px), compress="deflate", blocksize=256)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(image, 2, 0))
    return path
