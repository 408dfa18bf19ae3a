"""A self-contained map viewer for an XYZ pyramid: ``index.html`` + Leaflet shipped in this package.

Leaflet 1.9.4 (BSD-2-Clause, ``leaflet/LICENSE``; from the npm package's ``dist/``) is copied beside the page, so
it works from file:// or any static http server with no network: nothing is fetched from a CDN.
"""

from __future__ import annotations

import json
import shutil
from importlib.resources import as_file, files
from pathlib import Path
from string import Template


def write_viewer(
    out_dir: str | Path, bounds: list[float], tile_bounds: list[float], min_zoom: int, native_zoom: int, title: str
) -> Path:
    """Write ``out_dir/index.html`` (+ ``out_dir/leaflet/``) showing ``{z}/{x}/{y}.png`` tiles of ``out_dir``.

    ``bounds`` = [west, south, east, north] in degrees: the map opens fitted to them; ``tile_bounds`` (the same,
    inset by a fraction of a pixel against rounding) limits the tiles Leaflet requests to those written. Tiles
    exist for zooms min_zoom..native_zoom; the map zooms 2 levels past native_zoom (pixels drawn square).
    """
    out_dir = Path(out_dir)

    def latlng(b):  # Leaflet's [[south, west], [north, east]] order
        return [[float(b[1]), float(b[0])], [float(b[3]), float(b[2])]]

    config = {
        "bounds": latlng(bounds),
        "tileBounds": latlng(tile_bounds),
        "minZoom": int(min_zoom),
        "nativeZoom": int(native_zoom),
        "maxZoom": int(native_zoom) + 2,
        "title": title,
    }
    page = Template(files(__name__).joinpath("index.html").read_text(encoding="utf-8"))
    html = page.substitute(title=_html_escape(title), config=json.dumps(config).replace("</", "<\\/"))
    with as_file(files(__name__).joinpath("leaflet")) as src:
        shutil.copytree(src, out_dir / "leaflet", dirs_exist_ok=True)
    path = out_dir / "index.html"
    path.write_text(html, encoding="utf-8")
    return path


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
