"""Find image files and decode them to 8-bit RGB with one documented conversion rule.

Every decoded image is a ``uint8`` array ``(H, W, 3)``. The rule, per Pillow mode:

* ``RGB``: used as stored (no ICC colour management; drone cameras write sRGB).
* ``RGBA``/``LA``/``PA``/``RGBa``/``La`` (alpha): alpha-composited onto **black** (``background``), i.e.
  ``out = (c * a + bg * (255 - a) + 127) // 255`` in integers. Why black: the nodata areas of drone
  orthomosaic tiles are transparent in PNG/WebP tiles but black in the JPEG tiles of the same survey (JPEG has
  no alpha, and GDAL/orthomosaic exports use nodata = 0), so compositing onto black makes both encodings of
  one survey agree and keeps nodata easy to recognise later (pixels equal to 0).
* ``L`` (grey): replicated to 3 channels. ``1`` (bilevel): 0 -> 0, 1 -> 255, replicated.
* ``P`` (palette): expanded through its palette; a palette transparency (``tRNS``) becomes alpha and is
  composited as above.
* ``CMYK``/``YCbCr``/``LAB``/``HSV``/``RGBX``: Pillow's ``convert("RGB")``.
* High bit depth grey (``I;16``, ``I;16B``, ``I;16L``, ``I`` (32-bit int, how some readers give 16-bit data),
  ``F`` (float)): linearly rescaled to 0..255 (rounded, clipped) and replicated. The ``rescale`` argument
  chooses the input range:

  - ``"full"`` (default): the type's nominal range, 0..65535 for the integer modes, 0..1 for ``F``. One fixed
    mapping for every file keeps the tiles of one survey comparable: a dark tile stays dark instead of being
    stretched to full contrast like its bright neighbour.
  - ``"minmax"``: per image from its actual min..max (a constant image maps to 0). Useful for a folder of
    unrelated scans; breaks comparability between tiles.
  - ``(lo, hi)``: an explicit range, e.g. ``(0, 4095)`` for a 12-bit sensor stored in 16-bit files.
* 16-bit **RGB/RGBA** files (TIFF, PNG): Pillow itself reduces them to 8 bits by keeping the high byte
  (``v >> 8``), which is the full-range rule rounded down (at most 1 level below ``round(v * 255 / 65535)``).
  ``"minmax"`` and ``(lo, hi)`` are then applied to the 8-bit values (``(lo, hi)`` scaled by 1/257), so
  precision below 1/256 is lost.

EXIF orientation is applied (drone and phone JPEGs may be stored rotated); :func:`image_size` reports the
oriented size without decoding. Multi-page files use their first page. Any failure raises
:class:`ImageReadError` naming the file.

Web-map (XYZ) pyramids are laid out ``{root}/{z}/{x}/{y}.{ext}``; :func:`find_images` with ``zoom=23`` keeps
only files at exactly that place with integer ``z``/``x``/``y`` and ``z == 23``; :func:`parse_xyz` returns the
tile address.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "tif", "tiff", "webp")

Rescale = str | tuple[float, float]

# Pillow's own limit (DecompressionBombError above ~179 MP) dropped big orthomosaics as "unreadable"; rockgen
# checks ``data.max_image_pixels`` itself (check_pixels) and reads large files by window (rockgen.data.rasters).
Image.MAX_IMAGE_PIXELS = None
DEFAULT_MAX_IMAGE_PIXELS = 2_000_000_000

_HIGH_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# EXIF orientations 5..8 include a transpose: width and height swap.
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


class ImageReadError(OSError):
    """A file that exists in the dataset but cannot be decoded to RGB."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):  # keep it picklable (DataLoader workers send exceptions to the main process)
        return (type(self), (self.path, self.reason))


class SettingError(ImageReadError):
    """A readable file that the current settings cannot use (too large, band count, overview): always raised,
    never skipped like a corrupt file, and the message names the ``data.*`` setting to change."""


class ImageTooLargeError(SettingError):
    """An image whose pixel count exceeds ``data.max_image_pixels``."""


def check_pixels(path: str | os.PathLike, width: int, height: int, max_pixels: int | None) -> None:
    """Raise :class:`ImageTooLargeError` naming ``data.max_image_pixels`` if ``width * height`` exceeds it."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            path,
            f"{width}x{height} = {width * height / 1e6:.1f} MP exceeds data.max_image_pixels={max_pixels}; "
            "raise data.max_image_pixels (or set it to null) to use it",
        )


class NoImagesFoundError(FileNotFoundError):
    """A dataset root with no image that passes the extension and zoom filters."""


class XYZ(NamedTuple):
    """Web-map tile address: zoom, column, row (slippy-map convention)."""

    z: int
    x: int
    y: int


def normalize_extensions(extensions: Iterable[str] | None) -> tuple[str, ...]:
    """Lower-case extensions without dots; ``None`` gives :data:`IMAGE_EXTENSIONS`."""
    if extensions is None:
        return IMAGE_EXTENSIONS
    exts = tuple(sorted({e.lower().lstrip(".") for e in extensions}))
    if not exts or any(not e for e in exts):
        raise ValueError(f"extensions must be non-empty names such as 'png', got {list(extensions)!r}")
    return exts


def parse_xyz(rel_path: str | os.PathLike) -> XYZ | None:
    """The tile address of a path relative to a pyramid root (``"23/4194303/2796202.png"``), else ``None``."""
    parts = Path(rel_path).parts
    if len(parts) != 3:
        return None
    z, x, name = parts
    y = name.split(".", 1)[0]
    if not (z.isdigit() and x.isdigit() and y.isdigit() and "." in name):
        return None
    return XYZ(int(z), int(x), int(y))


def find_images(
    root: str | os.PathLike,
    extensions: Iterable[str] | None = None,
    zoom: int | None = None,
    allow_empty: bool = False,
) -> list[Path]:
    """All image files under ``root`` (recursive), sorted by their relative POSIX path.

    Matching is case-insensitive on the extension. Hidden files and folders (name starting with ``.``, e.g.
    macOS ``._x.jpg`` resource forks that are not images) are skipped. Symlinked folders are followed once.
    With ``zoom`` set, only ``{root}/{z}/{x}/{y}.{ext}`` files with ``z == zoom`` are kept.
    Raises :class:`NoImagesFoundError` naming the root, extensions and zoom when nothing matches (unless
    ``allow_empty``), and ``NotADirectoryError`` when ``root`` is not a folder.
    """
    root = Path(root).expanduser()
    exts = normalize_extensions(extensions)
    if not root.is_dir():
        raise NotADirectoryError(f"image root {str(root)!r} is not a directory")
    found: list[tuple[str, Path]] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or name.rsplit(".", 1)[-1].lower() not in exts or "." not in name:
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if zoom is not None:
                xyz = parse_xyz(rel)
                if xyz is None or xyz.z != zoom:
                    continue
            found.append((rel, path))
    found.sort(key=lambda item: item[0])
    if not found and not allow_empty:
        zoom_text = "none (all files)" if zoom is None else f"zoom == {zoom} in the layout <z>/<x>/<y>.<ext>"
        raise NoImagesFoundError(
            f"no images found under {str(root)!r} (searched recursively for extensions {list(exts)}, "
            f"zoom filter: {zoom_text})"
        )
    return [path for _, path in found]


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation, read from the header without decoding pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if _exif_orientation(im) in _SWAPPING_ORIENTATIONS:
                w, h = h, w
            return w, h
    except Exception as exc:  # any decoder error means "unreadable"
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc


def verify_image(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int]:
    """Cheap integrity check (Pillow ``verify()``: header, chunk checksums, no full decode) + oriented size.

    Catches empty, truncated-header and non-image files; a JPEG truncated mid-scan can still pass and is
    caught when decoded (see ``TileDataset``). Raises :class:`ImageTooLargeError` above ``max_pixels``.
    """
    try:
        with Image.open(path) as im:
            im.verify()  # first thing on a fresh handle: reading EXIF (a PNG eXIf chunk) breaks it
    except Exception as exc:
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc
    w, h = image_size(path)  # a second header read: cheap, and safe after verify() closed the first handle
    if w <= 0 or h <= 0:
        raise ImageReadError(path, f"empty image of size {w}x{h}")
    check_pixels(path, w, h, max_pixels)
    return w, h


def load_rgb(
    path: str | os.PathLike,
    rescale: Rescale = "full",
    background: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Decode ``path`` to ``uint8 (H, W, 3)`` by the module's conversion rule (EXIF orientation applied).

    ``rescale`` ("full" | "minmax" | (lo, hi)) applies to high-bit-depth files; ``background`` is the RGB
    colour that transparent pixels are composited onto (black by default: nodata of drone tiles). Raises
    :class:`ImageReadError`.
    """
    try:
        with Image.open(path) as im:
            im.seek(0)
            high_byte_rgb = im.mode in ("RGB", "RGBA") and _reads_16_bit(im)  # before load() clears ``tile``
            im.load()
            im = ImageOps.exif_transpose(im) if _exif_orientation(im) not in (None, 1) else im
            return to_rgb8(im, rescale=rescale, background=background, high_byte_rgb=high_byte_rgb)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc


def to_rgb8(
    im: Image.Image,
    rescale: Rescale = "full",
    background: Sequence[int] = (0, 0, 0),
    high_byte_rgb: bool = False,
) -> np.ndarray:
    """Convert a loaded Pillow image to ``uint8 (H, W, 3)`` by the module's rule (see the module docstring).

    ``high_byte_rgb`` marks an RGB image that Pillow reduced from 16 bits (only matters for ``rescale`` other
    than ``"full"``).
    """
    mode = im.mode
    if mode in _HIGH_BIT_GREY:
        grey = _rescale_to_uint8(np.asarray(im).astype(np.float64), mode, rescale)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "P":
        has_alpha = "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode in _ALPHA_MODES:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.int32)
        rgb8 = _composite(rgba, background)
    elif mode == "L":
        rgb8 = np.repeat(np.asarray(im, dtype=np.uint8)[:, :, None], 3, axis=2)
    elif mode == "RGB":
        rgb8 = np.asarray(im, dtype=np.uint8)
    else:
        rgb8 = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if high_byte_rgb and rescale != "full":
        lo_hi = rescale if rescale == "minmax" else (rescale[0] / 257.0, rescale[1] / 257.0)
        rgb8 = _rescale_to_uint8(rgb8.astype(np.float64), "L", lo_hi)
    return np.ascontiguousarray(rgb8)


def has_alpha(path: str | os.PathLike) -> bool:
    """Whether the file has an alpha channel or a palette transparency (what ``to_rgb8`` composites)."""
    with Image.open(path) as im:
        return im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)


def _composite(rgba: np.ndarray, background: Sequence[int]) -> np.ndarray:
    """Alpha-composite ``int32 (H, W, 4)`` onto a solid colour (integer rounding) -> ``uint8 (H, W, 3)``."""
    bg = np.asarray(background, dtype=np.int32).reshape(1, 1, 3)
    a = rgba[:, :, 3:4]
    return ((rgba[:, :, :3] * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def rescale_to_uint8(values: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    """Linear map of float64 ``values`` (any shape) from ``lo..hi`` to ``uint8`` 0..255 (rounded, clipped)."""
    return _rescale_to_uint8(values, "F", lo_hi)


def _rescale_to_uint8(values: np.ndarray, mode: str, rescale: Rescale) -> np.ndarray:
    """Linear map of ``values`` (any shape, float64) from the chosen input range to ``uint8`` 0..255."""
    if rescale == "full":
        lo, hi = (0.0, 1.0) if mode == "F" else (0.0, 255.0) if mode == "L" else (0.0, 65535.0)
    elif rescale == "minmax":
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    elif isinstance(rescale, (tuple, list)) and len(rescale) == 2:
        lo, hi = float(rescale[0]), float(rescale[1])
        if not hi > lo:
            raise ValueError(f"rescale range must have hi > lo, got {tuple(rescale)}")
    else:
        raise ValueError(f"rescale must be 'full', 'minmax' or a (lo, hi) pair, got {rescale!r}")
    values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    if hi <= lo:  # constant image under "minmax"
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def _reads_16_bit(im: Image.Image) -> bool:
    """Whether Pillow decodes ``im`` from 16-bit samples (raw mode such as ``"RGB;16B"`` in its tile list)."""
    for tile in im.tile or ():
        args = tile.args
        rawmode = args if isinstance(args, str) else (args[0] if args else "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block must not make the image unreadable
        return None
