"""Large sources read by window: GeoTIFF/COG through rasterio, big JPEG/PNG decoded once into a memory map.

A training tile must never cost a decode of its whole source file. Two kinds of "large" source:

* **GeoTIFF / COG / any TIFF rasterio reads** that is georeferenced, has a band layout Pillow cannot convert,
  or is larger than ``large_image_pixels``: read by window with rasterio (``pip install 'rockgen[geo]'``;
  rasterio wraps GDAL, the GIS ecosystem's reader, which knows tiled and striped layouts, internal overviews,
  nodata values, mask bands and alpha). 8/16-bit integer and float bands; 1 band = grey, 3 = RGB, 4 = RGB +
  alpha/4th band ignored (validity comes from GDAL's dataset mask); any other count needs ``data.bands``
  (1-based band numbers: one for grey, three for RGB). ``data.overview`` = k reads the k-th internal overview
  (coarser ground sampling distance) instead of full resolution.
* **JPEG/PNG/WebP (or a TIFF without rasterio) above ``large_image_pixels``**: decoded ONCE, in the main
  process before training, into an uncompressed ``uint8 (H, W, 3)`` ``.npy`` file in ``cache_dir`` (keyed by
  path, size, mtime and the conversion rule); workers read windows through ``np.load(mmap_mode="r")``, so a
  worker's memory holds only the pages it touches (the OS page cache is shared and reclaimable).

Nodata: a GeoTIFF's validity is GDAL's dataset mask (nodata value, mask band or alpha); a cached image's is its
alpha if it has one, else pixels within 2 levels of ``background`` in every channel (the black border of an
exported orthomosaic JPEG; JPEG noise keeps it from being exactly 0). Invalid pixels are painted
``background``. Grid cells whose nodata fraction exceeds ``max_nodata_fraction`` are dropped up front from a
mask read at 8 x 8 samples per tile (served from overviews when the file has them).

Every opened size is checked against ``max_image_pixels`` (``data.max_image_pixels``), replacing Pillow's
silent "decompression bomb" limit with a clear error naming the setting.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from rockgen.data.images import (
    ImageReadError,
    Rescale,
    SettingError,
    check_pixels,
    has_alpha,
    load_rgb,
    rescale_to_uint8,
    verify_image,
)

GEO_EXTENSIONS = ("tif", "tiff")
MASK_SAMPLES = 8  # mask samples per tile side when scoring grid cells (fraction resolution 1/64)
BLACK_TOLERANCE = 2  # levels: JPEG noise around an exported mosaic's black border


def import_rasterio():
    """``rasterio`` or an ``ImportError`` that says how to install it."""
    try:
        import rasterio
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("reading GeoTIFFs by window needs rasterio: pip install 'rockgen[geo]'") from exc
    return rasterio


def has_rasterio() -> bool:
    try:
        import_rasterio()
    except ImportError:
        return False
    return True


@dataclass
class Raster:
    """A large source, probed in the main process (picklable; workers open their own handles).

    ``kind`` is ``"geo"`` (rasterio window reads of ``path``) or ``"cache"`` (windows of the decoded ``.npy``
    at ``cache``, validity mask at ``mask_cache`` or ``None`` = derived from ``background``).
    ``crs`` (WKT or ``None``) and ``transform`` (affine ``(a, b, c, d, e, f)``: x = a*col + b*row + c) are
    the georeference of the pixel grid read (of the overview if ``overview`` > 0).
    """

    path: str
    kind: str
    width: int
    height: int
    bands: tuple[int, ...] = ()
    overview: int = 0
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    dtype: str = "uint8"
    has_mask: bool = False
    cache: str | None = None
    mask_cache: str | None = None
    value_range: tuple[float, float] | None = None
    _handle: object = field(default=None, repr=False, compare=False)
    _pid: int = field(default=-1, repr=False, compare=False)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None  # file handles and memory maps are per process
        return state

    def close(self) -> None:
        if self._handle is not None and self.kind == "geo" and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def window_transform(self, left: int, top: int) -> tuple[float, ...] | None:
        """Affine transform of a tile whose top-left pixel is ``(left, top)``."""
        if self.transform is None:
            return None
        a, b, c, d, e, f = self.transform[:6]
        return (a, b, c + a * left + b * top, d, e, f + d * left + e * top)

    # ------------------------------------------------------------------ reading
    def _open(self):
        if self._pid != os.getpid():  # a forked DataLoader worker must not share the parent's GDAL handle
            self._handle, self._pid = None, os.getpid()
        if self._handle is None:
            if self.kind == "geo":
                rasterio = import_rasterio()
                # GDAL's block cache defaults to 5 % of RAM per process: bound it per worker.
                os.environ.setdefault("GDAL_CACHEMAX", "64")
                self._handle = rasterio.open(self.path, **_overview_kwargs(self.overview))
            else:
                rgb = np.load(self.cache, mmap_mode="r")
                mask = np.load(self.mask_cache, mmap_mode="r") if self.mask_cache else None
                self._handle = (rgb, mask)
        return self._handle

    def read(self, left: int, top: int, width: int, height: int, background: Sequence[int] = (0, 0, 0)):
        """-> ``(rgb uint8 (height, width, 3), valid bool (height, width))``; nodata painted ``background``."""
        if self.kind == "geo":
            from rasterio.windows import Window

            ds = self._open()
            win = Window(left, top, width, height)
            try:
                data = ds.read(list(self.bands), window=win)
                valid = ds.dataset_mask(window=win) > 0 if self.has_mask else np.ones((height, width), bool)
            except Exception as exc:
                raise ImageReadError(self.path, f"window {win} unreadable: {type(exc).__name__}: {exc}") from exc
            rgb = self._to_rgb8(data, valid)
        else:
            img, mask = self._open()
            rgb = np.array(img[top : top + height, left : left + width])
            valid = (
                _near_colour(rgb, background)
                if mask is None
                else np.array(mask[top : top + height, left : left + width])
            )
        if not valid.all():
            rgb[~valid] = np.asarray(background, np.uint8)
        return rgb, valid

    def _to_rgb8(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """``(bands, h, w)`` of the file's dtype -> ``uint8 (h, w, 3)`` by the fixed range ``value_range``."""
        if data.dtype != np.uint8 or self.value_range != (0.0, 255.0):
            data = rescale_to_uint8(data.astype(np.float64), self.value_range)
        rgb = data.transpose(1, 2, 0)
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        return np.ascontiguousarray(rgb)

    # ------------------------------------------------------------------ grid cells
    def cell_valid_fraction(self, left0: int, top0: int, nx: int, ny: int, size: int, background) -> np.ndarray:
        """``float (ny, nx)``: valid fraction of each ``size`` grid cell starting at ``(left0, top0)``."""
        n = MASK_SAMPLES if size >= MASK_SAMPLES else size
        if self.kind == "geo":
            if not self.has_mask:
                return np.ones((ny, nx))
            from rasterio.windows import Window

            ds = self._open()
            try:  # a decimated read: GDAL serves it from an overview when the file has one
                mask = ds.dataset_mask(window=Window(left0, top0, nx * size, ny * size), out_shape=(ny * n, nx * n))
            except Exception as exc:
                raise ImageReadError(self.path, f"mask unreadable: {type(exc).__name__}: {exc}") from exc
            valid = mask > 0
        else:
            img, mask = self._open()
            step = size // n
            rows = top0 + np.arange(ny * n) * step + step // 2
            cols = left0 + np.arange(nx * n) * step + step // 2
            if mask is None:
                valid = _near_colour(np.asarray(img[rows][:, cols]), background)
            else:
                valid = np.asarray(mask[rows][:, cols])
        return valid.reshape(ny, n, nx, n).mean(axis=(1, 3))


def _near_colour(rgb: np.ndarray, colour: Sequence[int]) -> np.ndarray:
    """``bool (h, w)``: True where some channel differs from ``colour`` by more than the tolerance (= data)."""
    diff = np.abs(rgb.astype(np.int16) - np.asarray(colour, np.int16))
    return (diff > BLACK_TOLERANCE).any(axis=-1)


def _overview_kwargs(overview: int) -> dict:
    return {"overview_level": overview - 1} if overview > 0 else {}


def probe_geotiff(
    path: str | os.PathLike,
    bands: Sequence[int] | None = None,
    overview: int = 0,
    max_image_pixels: int | None = None,
    rescale: Rescale = "full",
    min_size: int = 1,
) -> Raster:
    """Open ``path`` with rasterio, check bands / size / integrity -> a :class:`Raster` of ``kind="geo"``.

    Raises :class:`ImageReadError` (naming the file and, where it applies, ``data.bands``/``data.overview``).
    """
    rasterio = import_rasterio()
    path = str(path)
    try:
        with rasterio.open(path) as ds:
            count, n_over = ds.count, len(ds.overviews(1)) if ds.count else 0
    except Exception as exc:
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc
    if overview > n_over:
        raise SettingError(path, f"data.overview={overview} but the file has {n_over} internal overview(s)")
    chosen = _choose_bands(path, count, bands)
    try:
        with rasterio.open(path, **_overview_kwargs(overview)) as ds:
            w, h = ds.width, ds.height
            check_pixels(path, w, h, max_image_pixels)
            dtype = ds.dtypes[chosen[0] - 1]
            flags = [ds.mask_flag_enums[b - 1] for b in chosen]
            has_mask = any(f != [rasterio.enums.MaskFlags.all_valid] for f in flags) or (
                count == 4 and ds.colorinterp[3] == rasterio.enums.ColorInterp.alpha
            )
            # A truncated file usually keeps its header: read the last block's pixel to catch it before training.
            ds.read(list(chosen), window=rasterio.windows.Window(w - 1, h - 1, 1, 1))
            crs = ds.crs.to_wkt() if ds.crs else None
            transform = tuple(ds.transform)[:6] if ds.transform and not ds.transform.is_identity else None
            value_range = _value_range(path, ds, chosen, dtype, rescale)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc
    if w < min_size or h < min_size:
        raise SettingError(path, f"{w}x{h} px is smaller than one tile (data.image_size={min_size})")
    return Raster(path, "geo", w, h, tuple(chosen), overview, crs, transform, dtype, has_mask, value_range=value_range)


def _choose_bands(path: str, count: int, bands: Sequence[int] | None) -> list[int]:
    if bands:
        chosen = [int(b) for b in bands]
        if len(chosen) not in (1, 3) or not all(1 <= b <= count for b in chosen):
            raise SettingError(path, f"data.bands={chosen} must be 1 or 3 band numbers in 1..{count}")
        return chosen
    if count in (1, 3):
        return list(range(1, count + 1))
    if count == 4:  # RGBA or RGB + NIR: the first three are the picture, validity comes from the mask
        return [1, 2, 3]
    raise SettingError(
        path, f"{count} bands: set data.bands to the 1-based band numbers to use, e.g. data.bands=[3,2,1] for RGB"
    )


def _value_range(path, ds, bands, dtype: str, rescale: Rescale) -> tuple[float, float]:
    """Input range mapped to 0..255: the dtype's full range, an explicit ``(lo, hi)``, or min..max of the
    valid pixels of the lowest-resolution overview ("minmax": one range for the whole file, so tiles agree)."""
    if isinstance(rescale, (tuple, list)):
        lo, hi = float(rescale[0]), float(rescale[1])
        if not hi > lo:
            raise SettingError(path, f"data.rescale range must have hi > lo, got {tuple(rescale)}")
        return lo, hi
    if rescale == "minmax":
        scale = max(1, max(ds.width, ds.height) // 1024)
        shape = (len(bands), max(1, ds.height // scale), max(1, ds.width // scale))
        data = ds.read(list(bands), out_shape=shape, masked=True)
        values = data.compressed() if np.ma.isMaskedArray(data) else data.ravel()
        values = values[np.isfinite(values)]
        return (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if rescale != "full":
        raise SettingError(path, f"data.rescale must be 'full', 'minmax' or [lo, hi], got {rescale!r}")
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(np.dtype(dtype))
        return float(max(info.min, 0)), float(info.max)
    return 0.0, 1.0


def decode_to_cache(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    width: int,
    height: int,
    rescale: Rescale = "full",
    background: Sequence[int] = (0, 0, 0),
) -> Raster:
    """Decode a large Pillow-readable image once into ``cache_dir`` -> a :class:`Raster` of ``kind="cache"``.

    The key hashes the resolved path, file size, mtime and conversion rule, so an edited file is decoded again.
    The ``.npy`` is written under a temporary name and renamed: a killed run never leaves a half file.
    """
    path = str(path)
    st = os.stat(path)
    key = hashlib.sha256(
        f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{rescale}|{tuple(background)}".encode()
    ).hexdigest()[:24]
    cache_dir = Path(cache_dir).expanduser()
    rgb_path, mask_path = cache_dir / f"{key}.rgb.npy", cache_dir / f"{key}.mask.npy"
    if not rgb_path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        alpha_channel = has_alpha(path)
        rgb = load_rgb(path, rescale=rescale, background=background)
        _atomic_save(rgb_path, rgb)
        if alpha_channel:
            with Image.open(path) as im:
                alpha = np.asarray(im.convert("RGBA"))[:, :, 3] > 0
            _atomic_save(mask_path, alpha)
        del rgb
    rgb = np.load(rgb_path, mmap_mode="r")
    if rgb.shape[:2] != (height, width):  # EXIF orientation already applied by both
        raise ImageReadError(
            path, f"cached decode {rgb_path} is {rgb.shape[1]}x{rgb.shape[0]}, header {width}x{height}"
        )
    return Raster(
        path, "cache", width, height, cache=str(rgb_path), mask_cache=str(mask_path) if mask_path.exists() else None
    )


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def open_large_sources(
    files: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    large: Sequence[bool],
    cache_dir: str | os.PathLike,
    rescale: Rescale,
    background: Sequence[int],
    progress: bool = True,
) -> list[Raster | None]:
    """Decode the ``large`` non-GeoTIFF files into the cache (progress bar) -> a ``Raster`` or ``None`` per file."""
    todo = [i for i, is_large in enumerate(large) if is_large]
    out: list[Raster | None] = [None] * len(files)
    for i in tqdm(todo, desc="decoding large images once", disable=not progress or not todo):
        w, h = sizes[i]
        out[i] = decode_to_cache(files[i], cache_dir, w, h, rescale, background)
    return out


@dataclass(frozen=True)
class SourceRules:
    """How files are probed: which are read by window, and the settings that apply (all from ``data.*``)."""

    image_size: int
    max_image_pixels: int | None = None
    large_image_pixels: int = 16_000_000
    bands: tuple[int, ...] | None = None
    overview: int = 0
    rescale: Rescale = "full"

    def probe(self, path: str) -> tuple[int, int, Raster | None]:
        """``(width, height, raster)``: ``raster`` is a GeoTIFF read by window, else ``None`` (a Pillow file,
        decoded whole, or into the cache when above ``large_image_pixels``). Raises ``ImageReadError``."""
        if path.rsplit(".", 1)[-1].lower() in GEO_EXTENSIONS and has_rasterio() and self._windowed_tiff(path):
            r = probe_geotiff(path, self.bands, self.overview, self.max_image_pixels, self.rescale, self.image_size)
            return r.width, r.height, r
        if self.bands or self.overview:
            raise SettingError(path, "data.bands / data.overview apply to GeoTIFFs read with rasterio only")
        w, h = verify_image(path, self.max_image_pixels)
        return w, h, None

    def _windowed_tiff(self, path: str) -> bool:
        """Georeferenced, big, a band layout / dtype Pillow cannot convert, or bands/overview asked for."""
        rasterio = import_rasterio()
        if self.bands or self.overview:
            return True
        try:
            with rasterio.open(path) as ds:
                georef = ds.crs is not None or not ds.transform.is_identity
                odd = ds.count not in (1, 3, 4) or ds.dtypes[0] not in ("uint8", "uint16")
                return georef or odd or ds.width * ds.height > self.large_image_pixels or ds.nodata is not None
        except Exception:
            return False  # let Pillow try, and report its error if it cannot either


def valid_cells(raster: Raster, size: int, max_nodata_fraction: float, background=(0, 0, 0)) -> np.ndarray:
    """Row-major numbers ``k`` of the centred ``size`` grid cells (as ``TileDataset`` numbers them) whose
    nodata fraction is at most ``max_nodata_fraction`` -> ``int64 (n,)``. Raises if none is left."""
    nx, ny = raster.width // size, raster.height // size
    left0, top0 = (raster.width - nx * size) // 2, (raster.height - ny * size) // 2
    frac_valid = raster.cell_valid_fraction(left0, top0, nx, ny, size, background)
    raster.close()  # opened in the main process: workers open their own
    keep = np.flatnonzero((1.0 - frac_valid).ravel() <= max_nodata_fraction + 1e-9)
    if keep.size == 0:
        raise SettingError(
            raster.path,
            f"none of its {nx * ny} tiles of {size} px has at most {max_nodata_fraction:.0%} nodata "
            f"(data.max_nodata_fraction={max_nodata_fraction}): the file is (almost) all nodata",
        )
    return keep.astype(np.int64)
