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

import hashlib
import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from rockgen.data.images import ImageReadError, NoImagesFoundError, Rescale, load_rgb, parse_xyz, verify_image

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
    files: Sequence[str | os.PathLike], strict: bool = False, num_threads: int = 8
) -> tuple[list[str], list[tuple[int, int]]]:
    """Check every file cheaply and read its oriented size -> ``(readable_files, sizes (w, h))``.

    Unreadable files are dropped with one :class:`CorruptImageWarning` listing them all; with ``strict`` the
    first one raises :class:`ImageReadError`. Raises :class:`NoImagesFoundError` if no file is readable.
    Threads overlap file I/O (network file systems); the result order is the input order.
    """
    paths = [str(f) for f in files]

    def check(path: str) -> tuple[int, int] | ImageReadError:
        try:
            return verify_image(path)
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


def resize_short_side(img: np.ndarray, size: int) -> np.ndarray:
    """Lanczos-resize ``uint8 (H, W, 3)`` so its shorter side is ``size`` (aspect ratio kept)."""
    h, w = img.shape[:2]
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    return np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.LANCZOS))


def center_window(h: int, w: int, size: int) -> tuple[int, int]:
    """Top-left ``(top, left)`` of the central ``size`` window of an ``h x w`` image."""
    return (h - size) // 2, (w - size) // 2


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
    ):
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
        counts = [self._items_in(w, h) for w, h in self.sizes]
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # item i of file f = offsets[f] + i
        self._cache: tuple[int, np.ndarray] | None = None  # last decoded image (grid items are consecutive)
        self._failed: set[int] = set()  # sources that failed to decode in this process

    def _items_in(self, w: int, h: int) -> int:
        if self.mode == "center_crop":
            return 1
        if self.mode == "random_crop" and self.crops_per_file is not None:
            return self.crops_per_file
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
        if self.mode == "random_crop" or w < s or h < s:
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

    def _decode(self, source: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == source:
            return self._cache[1]
        img = load_rgb(self.files[source], rescale=self.rescale, background=self.background)
        if img.shape[0] < self.image_size or img.shape[1] < self.image_size:
            img = resize_short_side(img, self.image_size)
            # The resized image gives exactly one (central) item, whatever the mode.
            top, left = center_window(img.shape[0], img.shape[1], self.image_size)
            img = np.ascontiguousarray(img[top : top + self.image_size, left : left + self.image_size])
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
        if self.augment["hflip"] and torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
        if self.augment["vflip"] and torch.rand((), generator=gen) < 0.5:
            x = x.flip(-2)
        if self.augment["rot90"]:
            k = int(torch.randint(0, 4, (), generator=gen).item())
            if k:
                x = torch.rot90(x, k, dims=(-2, -1))
        return x.contiguous()

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """``index``, or ``(index, seed)`` (``EpochSampler``): the crop and flips then come from that seed alone."""
        gen = None
        if isinstance(index, tuple):
            index, seed = index
            gen = torch.Generator().manual_seed(int(seed))
        source, k = self.locate(int(index))
        used, img = self._decode_or_substitute(source)
        x = self._augment(to_model_range(self._window(img, k, gen)), gen)
        return {"img": x, "index": int(index), "source": used}


def relative_keys(files: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> list[str]:
    """POSIX paths of ``files`` relative to ``root`` (default: their common folder): portable keys."""
    paths = [Path(f) for f in files]
    if root is None:
        root = os.path.commonpath([str(p.parent) for p in paths]) if paths else "."
    return [Path(os.path.relpath(p, root)).as_posix() for p in paths]


def xyz_block_groups(keys: Sequence[str], block: int) -> list[str]:
    """Group XYZ tiles into ``block x block`` squares (neighbouring tiles share content across their seams);
    keys that are not ``z/x/y.ext`` stay their own group."""
    groups = []
    for key in keys:
        xyz = parse_xyz(key)
        groups.append(key if xyz is None else f"xyz:{xyz.z}/{xyz.x // block}/{xyz.y // block}")
    return groups


def split_files(
    files: Sequence[str | os.PathLike],
    val_fraction: float,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    groups: Sequence[str] | None = None,
) -> tuple[list, list]:
    """Deterministic train/val split by source file -> ``(train_files, val_files)``, each in input order.

    Each file (or each group of files, if ``groups`` gives a key per file) is ranked by SHA-256 of
    ``"{seed}/{relative path}"`` - the same on every machine and Python run, unlike ``hash()`` - and the
    lowest ``round(val_fraction * n)`` go to validation, at least one when there are >= 2 groups and
    ``val_fraction > 0``, never all. All tiles of one file land on the same side.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    keys = relative_keys(files, root)
    groups = list(keys) if groups is None else [str(g) for g in groups]
    if len(groups) != len(keys):
        raise ValueError(f"got {len(groups)} group keys for {len(keys)} files")
    unique = sorted(set(groups))
    n_val = 0
    if val_fraction > 0 and len(unique) >= 2:
        n_val = min(len(unique) - 1, max(1, int(val_fraction * len(unique) + 0.5)))

    def rank(group: str) -> tuple[bytes, str]:
        return hashlib.sha256(f"{seed}/{group}".encode()).digest(), group

    val_groups = set(sorted(unique, key=rank)[:n_val])
    train = [f for f, g in zip(files, groups, strict=True) if g not in val_groups]
    val = [f for f, g in zip(files, groups, strict=True) if g in val_groups]
    return train, val
