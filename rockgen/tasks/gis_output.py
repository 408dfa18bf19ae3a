"""GIS outputs of an image task (``output=png|geotiff|xyz`` or a list): one place for the checks and the writing.

``task=mosaic`` writes its mosaic, ``task=generate`` its batch laid out as a sheet; ``geotiff`` adds a COG in
EPSG:3857 with the image's top-left at XYZ tile ``x``, ``y`` of ``zoom``, ``xyz`` the pyramid
``xyz/{z}/{x}/{y}.png`` from ``zoom`` down to ``min_zoom`` with a Leaflet viewer ``xyz/index.html``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

EARTH_CIRCUMFERENCE_M = 2 * math.pi * 6378137.0  # EPSG:3857 world width
OUTPUTS = ("png", "geotiff", "xyz")  # the PNG is always written; the others add GIS files


def check_zoom(zoom) -> int:
    if zoom is None or not 0 <= int(zoom) <= 30 or int(zoom) != zoom:
        raise ValueError(f"zoom must be an integer in 0..30 (XYZ levels), got {zoom}")
    return int(zoom)


def pixel_size_m(zoom: int) -> float:
    """Web-Mercator pixel size (m) of 256 px XYZ tiles at ``zoom``."""
    check_zoom(zoom)
    return EARTH_CIRCUMFERENCE_M / (256 * 2**zoom)


def output_kinds(output) -> set[str]:
    """``output`` (one of OUTPUTS or a list of them) as a set."""
    kinds = [output] if isinstance(output, str) else list(output or [])
    bad = [k for k in kinds if k not in OUTPUTS]
    if bad or not kinds:
        raise ValueError(f"output must be one of {'|'.join(OUTPUTS)} or a list of them, got {output!r}")
    return set(kinds)


@dataclass
class GisOutputs:
    """The GIS files an image of ``height`` × ``width`` px goes to, checked before any work (:meth:`plan`)."""

    kinds: set[str]
    run_dir: Path
    stem: str
    zoom: int | None = None
    x: int = 0
    y: int = 0
    min_zoom: int | None = None
    overwrite: bool = False
    png_alone: bool = True  # <stem>.png is written for output=png too (mosaic), not only beside GIS files (generate)

    @classmethod
    def plan(
        cls, cfg: DictConfig, run_dir: Path, stem: str, height: int, width: int, png_alone: bool = True
    ) -> GisOutputs:
        """Check ``output``, ``zoom``/``x``/``y``/``min_zoom`` and existing files; nothing is written yet.

        ``png_alone=False``: the task writes ``<stem>.png`` only beside a GeoTIFF or pyramid (``task=generate``'s
        sheet), so with ``output=png`` an old ``<stem>.png`` is neither checked nor touched."""
        kinds = output_kinds(cfg.get("output", "png"))
        out = cls(kinds, Path(run_dir), stem, overwrite=bool(cfg.get("overwrite", False)), png_alone=png_alone)
        if kinds & {"geotiff", "xyz"}:
            from rockgen.gis import tile_origin

            out.zoom, out.x, out.y = check_zoom(cfg.zoom), int(cfg.x), int(cfg.y)
            tile_origin(out.zoom, out.x, out.y)  # a tile off the world fails here
        if "xyz" in kinds:
            from rockgen.xyz import check_min_zoom, check_placement

            check_placement(height, width, out.zoom, out.x, out.y)
            if cfg.get("min_zoom") is not None:
                out.min_zoom = check_min_zoom(cfg.min_zoom, out.zoom)
        for path in out.paths().values():
            if path.exists() and not out.overwrite:
                raise FileExistsError(f"{path} exists: choose another run_name or set overwrite=true")
        return out

    def paths(self) -> dict[str, Path]:
        """Output kind → file or folder this task writes (the PNG too whenever it is written)."""
        all_paths = {"png": self.run_dir / f"{self.stem}.png", "geotiff": self.run_dir / f"{self.stem}.tif"}
        all_paths["xyz"] = self.run_dir / "xyz"
        kinds = set(self.kinds)
        if self.png_alone or kinds - {"png"}:
            kinds.add("png")
        else:
            kinds.discard("png")
        return {k: p for k, p in all_paths.items() if k in kinds}

    def write_gis(self, img: np.ndarray) -> dict:
        """Write the GeoTIFF / XYZ outputs of ``img`` (H, W, 3) uint8 (the PNG is the caller's); what was written."""
        info: dict = {}
        paths, zxy = self.paths(), (self.zoom, self.x, self.y)
        if "geotiff" in self.kinds:
            from rockgen.gis import write_geotiff

            info["geotiff"] = str(write_geotiff(paths["geotiff"], img, *zxy, overwrite=self.overwrite))
            print(f"Wrote the Cloud-Optimised GeoTIFF {info['geotiff']} (EPSG:3857, tile {self.x},{self.y} at zoom "
                  f"{self.zoom})")  # fmt: skip
        if "xyz" in self.kinds:
            from rockgen.xyz import write_xyz

            info["xyz"] = write_xyz(paths["xyz"], img, *zxy, min_zoom=self.min_zoom, overwrite=self.overwrite)
            levels = f"zooms {info['xyz']['zoom']}..{info['xyz']['min_zoom']}"
            print(f"Wrote the XYZ pyramid {paths['xyz']} ({levels}); open {paths['xyz'] / 'index.html'} to view it")
        return info
