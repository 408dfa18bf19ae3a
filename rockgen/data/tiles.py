"""Square training tiles cut from image files, and a split of files into train/val that never leaks a photo.

``TileDataset`` turns a list of image files into items ``{"img": float32 (3, S, S) in [-1, 1], "index": int,
"source": int}`` where ``source`` indexes ``files``. Images keep their native resolution (a drone survey has
one ground sampling distance; rescaling would change the apparent grain size). Three modes:

* ``"random_crop"`` (training): a uniformly random ``S x S`` window of the source. By default a file yields as
  many items per epoch as it has grid tiles, so an epoch covers about as many pixels as the data set has and
  big photos are sampled in proportion to their area (``crops_per_file`` fixes the count instead).
* ``"grid"``: the non-overlapping ``S x S`` tiles of each image, row-major, the grid centred (the leftover
  margin split evenly); each tile is one item, deterministic. Tile counts come from the image headers, read
  once.
* ``"center_crop"``: one central ``S x S`` window per file (validation / latent inference of small tiles).

Images with a side shorter than ``S`` are resized (shorter side to ``S``, Lanczos) and centre-cropped: one
item in every mode. Augmentations (random flips and 90-degree rotations: nadir tiles have no "up") are drawn
from torch's RNG, which DataLoader seeds per worker, so ``seed_everything`` makes runs repeatable; training
indexes items with ``(index, seed)`` (``rockgen.data.sampler.EpochSampler``), which draws them from that seed
alone, so a resumed run crops and flips exactly as an uninterrupted one.

Unreadable files never crash an epoch: they are found up front (Pillow ``verify()``) and skipped with ONE
:class:`CorruptImageWarning` listing them, or raise with ``strict=True``. A file that passes the check but
fails to decode later (e.g. a JPEG truncated mid-scan) is replaced by the next readable source (deterministic)
and reported once per process; ``item["source"]`` then names the substitute while ``item["index"]`` stays the
requested index.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rockgen.data.fit import (
    FITS,
    center_window,
    fit_image,
    fitted_size,
    resize_short_side,  # noqa: F401  (re-exported: older imports)
)
from rockgen.data.images import (
    ImageReadError,
    NoImagesFoundError,
    Rescale,
    SettingError,
    load_rgb,
    verify_image,
)
from rockgen.data.rasters import Raster
from rockgen.data.split import relative_keys, split_files, xyz_block_groups  # noqa: F401  (re-exported)

MODES = ("random_crop", "grid", "center_crop")
AUGMENT_KEYS = ("hflip", "vflip", "rot90")
_MAX_LISTED = 20


class CorruptImageWarning(UserWarning):
    """Some image files were skipped because they cannot be read."""


def _describe_bad(bad: Sequence[tuple[str, str]]) -> str:
    lines = [f"  {path} ({reason})" for path, reason in bad[:_MAX_LISTED]]
    if len(bad) > _MAX_LISTED:
        lines.append(f"  ... and {len(bad) - _MAX_LISTED} more")
    return "\n".join(lines)


def probe_images(
    files: Sequence[str | os.PathLike],
    strict: bool = False,
    num_threads: int = 8,
    probe: Callable[[str], Any] = verify_image,
) -> tuple[list[str], list]:
    """Check every file cheaply and read its oriented size -> ``(readable_files, sizes (w, h))``.

    Unreadable files are dropped with one :class:`CorruptImageWarning` listing them all; with ``strict`` the
    first one raises :class:`ImageReadError`. Raises :class:`NoImagesFoundError` if no file is readable.
    Threads overlap file I/O (network file systems); the result order is the input order. ``probe(path)``
    gives each result (default: the size); a :class:`SettingError` (the settings, not the file, are at fault:
    too many pixels, bands) is raised at once.
    """
    paths = [str(f) for f in files]

    def check(path: str) -> Any:
        try:
            return probe(path)
        except SettingError:
            raise
        except ImageReadError as exc:
            return exc

    if len(paths) >= 32 and num_threads > 1:
        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            results = list(pool.map(check, paths))
    else:
        results = [check(p) for p in paths]
    good, sizes, bad = [], [], []
    for path, res in zip(paths, results, strict=True):
        if isinstance(res, ImageReadError):
            bad.append((path, res.reason))
        else:
            good.append(path)
            sizes.append(res)
    if bad and strict:
        more = f" ({len(bad) - 1} more unreadable files)" if len(bad) > 1 else ""
        raise ImageReadError(bad[0][0], bad[0][1] + more)
    if bad and not good:
        raise NoImagesFoundError(f"all {len(bad)} image files are unreadable:\n{_describe_bad(bad)}")
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable image file(s) of {len(paths)} (strict=False):\n" + _describe_bad(bad),
            CorruptImageWarning,
            stacklevel=2,
        )
    return good, sizes


def grid_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """``(columns, rows)`` of non-overlapping ``size`` tiles; ``(1, 1)`` if the image is smaller."""
    if width < size or height < size:
        return 1, 1
    return width // size, height // size


def normalize_augment(augment: Mapping[str, bool] | None) -> dict[str, bool]:
    """``{"hflip", "vflip", "rot90"} -> bool``; ``None`` turns all off; unknown keys raise ``ValueError``."""
    if augment is None:
        return dict.fromkeys(AUGMENT_KEYS, False)
    unknown = set(augment) - set(AUGMENT_KEYS)
    if unknown:
        raise ValueError(f"unknown augment keys {sorted(unknown)}; expected a subset of {list(AUGMENT_KEYS)}")
    return {k: bool(augment.get(k, False)) for k in AUGMENT_KEYS}


def to_model_range(tile: np.ndarray) -> torch.Tensor:
    """``uint8 (S, S, 3)`` -> ``float32 (3, S, S)`` with 0 -> -1 and 255 -> 1 exactly (``v / 127.5 - 1``)."""
    return torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


def d4_augment(x: torch.Tensor, augment: Mapping[str, bool], gen: torch.Generator | None = None) -> torch.Tensor:
    """Random flips / 90-degree rotations of ``(3, S, S)`` (the dihedral group D4 of a nadir tile), drawn from
    ``gen`` in a fixed order so that one seed gives one transform."""
    if augment["hflip"] and torch.rand((), generator=gen) < 0.5:
        x = x.flip(-1)
    if augment["vflip"] and torch.rand((), generator=gen) < 0.5:
        x = x.flip(-2)
    if augment["rot90"]:
        k = int(torch.randint(0, 4, (), generator=gen).item())
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
    return x.contiguous()


class TileDataset(Dataset):
    """Square tiles from image files. Item: ``{"img": (3, S, S) float32 in [-1, 1], "index", "source"}``.

    Args:
        files: image paths; ``source`` in an item indexes this list (after unreadable files are dropped: use
            ``dataset.files``).
        image_size: tile side ``S`` in pixels.
        mode: ``"random_crop"`` | ``"grid"`` | ``"center_crop"`` (see the module docstring).
        augment: ``{"hflip": bool, "vflip": bool, "rot90": bool}``; ``None`` = no augmentation (eval).
        crops_per_file: items per file in ``random_crop`` mode; ``None`` = the file's grid tile count.
        strict: raise on an unreadable file instead of skipping it.
        sizes: ``(w, h)`` per file if already probed (skips the up-front check: ``files`` must be readable).
        rescale, background: the high-bit-depth and alpha rules of :func:`rockgen.data.images.load_rgb`.
        fit: ``"crop"`` | ``"resize"`` | ``"pad"``: how a decoded image becomes tiles (:func:`fit_image`).
        rasters: per file a :class:`~rockgen.data.rasters.Raster` read by window (GeoTIFF, cached decode) or
            ``None`` (decoded whole); ``cells`` then lists, per raster file, the grid cells it yields
            (``rasters.valid_cells``, possibly split); ``max_nodata_fraction`` bounds a random window's nodata.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike],
        image_size: int,
        mode: str = "random_crop",
        augment: Mapping[str, bool] | None = None,
        crops_per_file: int | None = None,
        strict: bool = False,
        sizes: Sequence[tuple[int, int]] | None = None,
        rescale: Rescale = "full",
        background: Sequence[int] = (0, 0, 0),
        fit: str = "crop",
        rasters: Sequence[Raster | None] | None = None,
        cells: Sequence[np.ndarray | None] | None = None,
        max_nodata_fraction: float = 0.05,
    ):
        if fit not in FITS:
            raise ValueError(f"data.fit must be one of {FITS}, got {fit!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if crops_per_file is not None and crops_per_file < 1:
            raise ValueError(f"crops_per_file must be >= 1 or None, got {crops_per_file}")
        if not files:
            raise NoImagesFoundError("TileDataset got an empty file list")
        if sizes is None:
            files, sizes = probe_images(files, strict=strict)
        elif len(sizes) != len(files):
            raise ValueError(f"got {len(sizes)} sizes for {len(files)} files")
        self.files: list[str] = [str(f) for f in files]
        self.sizes: list[tuple[int, int]] = [(int(w), int(h)) for w, h in sizes]
        self.image_size = int(image_size)
        self.mode = mode
        self.augment = normalize_augment(augment)
        self.crops_per_file = crops_per_file
        self.strict = strict
        self.rescale = rescale
        self.background = tuple(background)
        self.fit = fit
        self.rasters = list(rasters) if rasters is not None else [None] * len(self.files)
        self.cells = list(cells) if cells is not None else [None] * len(self.files)
        if len(self.rasters) != len(self.files) or len(self.cells) != len(self.files):
            raise ValueError("rasters and cells need one entry per file")
        for f, r in enumerate(self.rasters):
            if r is not None and self.cells[f] is None:
                self.cells[f] = np.arange((r.width // image_size) * (r.height // image_size), dtype=np.int64)
            if r is not None and fit == "resize":
                raise SettingError(r.path, "data.fit=resize reads whole images; this file is read by window")
        self.max_nodata_fraction = float(max_nodata_fraction)
        counts = [self._items_in(f) for f in range(len(self.files))]
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # item i of file f = offsets[f] + i
        self._cache: tuple[int, np.ndarray] | None = None  # last decoded image (grid items are consecutive)
        self._failed: set[int] = set()  # sources that failed to decode in this process

    def _items_in(self, f: int) -> int:
        if self.mode == "center_crop":
            return 1
        if self.mode == "random_crop" and self.crops_per_file is not None:
            return self.crops_per_file
        if self.rasters[f] is not None:
            return len(self.cells[f])
        w, h = fitted_size(*self.sizes[f], self.image_size, self.fit)
        nx, ny = grid_shape(w, h, self.image_size)
        return nx * ny

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = None  # never ship decoded pixels to workers
        return state

    def locate(self, index: int) -> tuple[int, int]:
        """``(source, k)``: the file of item ``index`` and the item's number within that file."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        source = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return source, int(index - self.offsets[source])

    def item_source(self, index: int) -> int:
        """Index into ``files`` of the file that item ``index`` is cut from."""
        return self.locate(index)[0]

    def item_box(self, index: int) -> tuple[int, int, int, int] | None:
        """``(left, top, right, bottom)`` of a grid/centre item in the (oriented) source; ``None`` when random
        or when the source is resized because it is smaller than ``S``."""
        source, k = self.locate(index)
        w, h = self.sizes[source]
        s = self.image_size
        if self.rasters[source] is not None and self.mode != "random_crop":
            top, left = self._grid_window(h, w, self._cell(source, k))
            return left, top, left + s, top + s
        if self.mode == "random_crop" or w < s or h < s or self.fit == "resize":
            return None
        if self.mode == "center_crop":
            top, left = center_window(h, w, s)
        else:
            top, left = self._grid_window(h, w, k)
        return left, top, left + s, top + s

    def _grid_window(self, h: int, w: int, k: int) -> tuple[int, int]:
        s = self.image_size
        nx, ny = grid_shape(w, h, s)
        k = k % (nx * ny)  # guards a file whose decoded size differs from its header
        top0, left0 = (h - ny * s) // 2, (w - nx * s) // 2
        return top0 + (k // nx) * s, left0 + (k % nx) * s

    def item_georef(self, index: int) -> tuple[str | None, tuple[float, ...] | None]:
        """``(crs_wkt, affine transform)`` of a grid/centre item of a georeferenced source, else ``(None, None)``."""
        source, _ = self.locate(index)
        raster, box = self.rasters[source], self.item_box(index)
        if raster is None or box is None:
            return None, None
        return raster.crs, raster.window_transform(box[0], box[1])

    def _cell(self, source: int, k: int) -> int:
        cells = self.cells[source]
        return int(cells[len(cells) // 2 if self.mode == "center_crop" else k % len(cells)])

    def _read_raster(self, source: int, k: int, gen: torch.Generator | None) -> np.ndarray:
        """A tile of a windowed source: grid cell ``k`` (jittered by up to half a tile in ``random_crop`` mode,
        unless the jittered window has more than ``max_nodata_fraction`` nodata)."""
        raster, s = self.rasters[source], self.image_size
        top, left = self._grid_window(raster.height, raster.width, self._cell(source, k))
        if self.mode == "random_crop":
            dy, dx = (int(v) for v in torch.randint(-(s // 2), s // 2 + 1, (2,), generator=gen))
            t2 = min(max(top + dy, 0), raster.height - s)
            l2 = min(max(left + dx, 0), raster.width - s)
            rgb, valid = raster.read(l2, t2, s, s, self.background)
            if 1.0 - valid.mean() <= self.max_nodata_fraction:
                return rgb
        return raster.read(left, top, s, s, self.background)[0]

    def _decode(self, source: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == source:
            return self._cache[1]
        img = load_rgb(self.files[source], rescale=self.rescale, background=self.background)
        img = fit_image(img, self.image_size, self.fit, self.background)
        self._cache = (source, img)
        return img

    def _decode_or_substitute(self, source: int) -> tuple[int, np.ndarray]:
        """Decode ``source``; on failure (non-strict) the next readable source in file order."""
        n = len(self.files)
        for step in range(n):
            candidate = (source + step) % n
            if candidate in self._failed:
                continue
            try:
                return candidate, self._decode(candidate)
            except ImageReadError as exc:
                if self.strict:
                    raise
                self._failed.add(candidate)
                warnings.warn(
                    f"image failed to decode after passing the up-front check; using the next readable file "
                    f"for its items: {exc}",
                    CorruptImageWarning,
                    stacklevel=3,
                )
        raise ImageReadError(self.files[source], "no readable file left in the dataset to substitute")

    def _window(self, img: np.ndarray, k: int, gen: torch.Generator | None = None) -> np.ndarray:
        s = self.image_size
        h, w = img.shape[:2]
        if h == s and w == s:
            return img
        if self.mode == "random_crop":
            top = int(torch.randint(0, h - s + 1, (), generator=gen).item())
            left = int(torch.randint(0, w - s + 1, (), generator=gen).item())
        elif self.mode == "grid":
            top, left = self._grid_window(h, w, k)
        else:
            top, left = center_window(h, w, s)
        return img[top : top + s, left : left + s]

    def _augment(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        return d4_augment(x, self.augment, gen)

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """``index``, or ``(index, seed)`` (``EpochSampler``): the crop and flips then come from that seed alone."""
        gen = None
        if isinstance(index, tuple):
            index, seed = index
            gen = torch.Generator().manual_seed(int(seed))
        source, k = self.locate(int(index))
        if self.rasters[source] is not None:
            x = self._augment(to_model_range(self._read_raster(source, k, gen)), gen)
            return {"img": x, "index": int(index), "source": source}
        used, img = self._decode_or_substitute(source)
        x = self._augment(to_model_range(self._window(img, k, gen)), gen)
        return {"img": x, "index": int(index), "source": used}
