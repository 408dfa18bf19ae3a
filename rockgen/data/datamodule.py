"""``TileDataModule``: image folders or the demo rocks -> train / val / predict loaders of square tiles.

Every constructor argument is a plain type, so Hydra can instantiate it from ``rockgen/configs/data/*.yaml``.
Batches are ``{"img": (B, 3, S, S) float32 in [-1, 1], "index": (B,) int64, "source": (B,) int64}``.

* ``batch_size`` is the GLOBAL batch: ``setup`` divides it by the trainer's world size (each DDP rank loads
  ``batch_size // world_size``); ``rockgen.data.sampler.epoch_sampler`` shards the training order across ranks,
  Lightning's DistributedSampler the val/predict sets.
* Train: random crops (or grid tiles) of the training files, shuffled, augmented, ``drop_last``. The order,
  crops and flips are a pure function of (seed, epoch, index) and the loader's position is saved in
  checkpoints (``rockgen.data.sampler``), so a run resumed mid-epoch sees the batches it would have seen.
* Val: grid tiles of the held-out files (split by source file, see ``split_files``), no augmentation, at most
  ``val_max_items`` evenly spaced tiles: the same tiles every epoch.
* Predict: ALL files in ``files`` order, no augmentation, grid tiles (``crop="grid"``) or one centre crop per
  file (``crop="random"``). Items carry ``index`` so outputs gathered from several ranks can be put back in
  order; ``predict_paths()`` / ``predict_sources()`` map each index to its file, ``labels()`` gives each
  file's folder.

Usage::

    dm = TileDataModule(root=None, demo_dir="data/demo", image_size=64, batch_size=8)  # demo rocks
    dm = TileDataModule(root="/data/survey_tiles", zoom=23, crop="grid")             # an XYZ pyramid
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Subset

from rockgen.data.demo import write_demo_dataset
from rockgen.data.fit import FITS
from rockgen.data.images import DEFAULT_MAX_IMAGE_PIXELS, SettingError, find_images
from rockgen.data.rasters import Raster, SourceRules, open_large_sources, valid_cells
from rockgen.data.sampler import ResumableLoader, consumed_train_batches, epoch_sampler, split_global_batch
from rockgen.data.shards import ShardDataset, manifest_path, read_manifest, split_shards
from rockgen.data.split import held_out_groups, relative_keys, split_cells, xyz_block_groups
from rockgen.data.tiles import TileDataset, normalize_augment, probe_images

CROPS = ("random", "grid")


class TileDataModule(pl.LightningDataModule):
    """Square tiles from a folder tree of images (``root``) or from the generated demo rocks (``root=None``).

    Args (all plain types):
        root: image folder searched recursively; ``None`` -> demo data written to/cached in ``demo_dir``.
        demo_dir, demo_num_per_class, demo_size, demo_seed: where and what demo data to generate.
        image_size: tile side ``S``.
        batch_size: global training batch (divided by the world size); ``val_batch_size`` likewise (default =
            ``batch_size``).
        num_workers, persistent_workers, pin_memory: DataLoader options (pinning only when training on CUDA).
        val_fraction, split_seed: deterministic held-out fraction of source files (see ``split_files``).
        val_max_items: cap on validation tiles (evenly spaced); ``None`` = all.
        crop: ``"random"`` crops or ``"grid"`` tiles for training (and grid vs centre crop for predict).
        augment: ``{"hflip", "vflip", "rot90"}`` booleans for training (default all on; ``{}`` = none).
        zoom: keep only ``{z}/{x}/{y}.ext`` files with ``z == zoom`` (web-map pyramids); ``None`` = all files.
        xyz_split_block: XYZ tiles are split train/val in ``block x block`` squares so that neighbouring
            tiles do not leak across the split; ``None``/0 = per file.
        extensions: file extensions to accept (default png, jpg, jpeg, tif, tiff, webp).
        strict: raise on an unreadable file instead of skipping it with one warning.
        shuffle_seed: seed of the training order and augmentation; ``None`` = the run's ``seed``.
        rescale: 16-bit/float grey input range: "full" (type range), "minmax" (per image) or [lo, hi].
        background: RGB that transparent pixels are composited onto (black: the nodata convention).
        fit: ``crop`` | ``resize`` | ``pad``: how each decoded image becomes tiles (``rockgen.data.fit``).
        bands, overview: GeoTIFF band numbers (1-based, 1 or 3 of them) and internal overview level (0 = full).
        max_image_pixels: larger images are an error naming this setting (``None`` = no limit).
        large_image_pixels: Pillow images above this are decoded once into ``cache_dir`` and read by window.
        max_nodata_fraction: grid cells of a windowed source with more nodata than this are skipped.
    """

    def __init__(
        self,
        root: str | None = None,
        demo_dir: str = "data/demo",
        demo_num_per_class: int = 64,
        demo_size: int = 96,
        demo_seed: int = 0,
        image_size: int = 64,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        val_max_items: int | None = 64,
        crop: str = "random",
        augment: Mapping[str, bool] | None = None,
        zoom: int | None = None,
        xyz_split_block: int | None = 8,
        extensions: list[str] | None = None,
        strict: bool = False,
        split_seed: int = 0,
        persistent_workers: bool = True,
        shuffle_seed: int | None = None,
        pin_memory: bool = True,
        rescale: str | Sequence[float] = "full",
        background: Sequence[int] = (0, 0, 0),
        fit: str = "crop",
        bands: Sequence[int] | None = None,
        overview: int = 0,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        large_image_pixels: int = 16_000_000,
        max_nodata_fraction: float = 0.05,
        cache_dir: str = "data/decoded",
    ):
        super().__init__()
        if fit not in FITS:
            raise ValueError(f"data.fit must be one of {FITS}, got {fit!r}")
        if not 0.0 <= max_nodata_fraction <= 1.0:
            raise ValueError(f"data.max_nodata_fraction must be in [0, 1], got {max_nodata_fraction}")
        if crop not in CROPS:
            raise ValueError(f"data.crop must be one of {CROPS}, got {crop!r}")
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError(f"data.batch_size / data.val_batch_size must be >= 1, got {batch_size}/{val_batch_size}")
        self.root = None if root is None else str(root)
        self.demo_dir = str(demo_dir)
        self.demo_num_per_class = int(demo_num_per_class)
        self.demo_size = int(demo_size)
        self.demo_seed = int(demo_seed)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.val_batch_size = None if val_batch_size is None else int(val_batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.val_max_items = val_max_items
        self.crop = crop
        augment = {"hflip": True, "vflip": True, "rot90": True} if augment is None else dict(augment)
        self.augment = normalize_augment(augment)
        self.zoom = zoom
        self.xyz_split_block = xyz_split_block
        self.extensions = None if extensions is None else [str(e) for e in extensions]
        self.strict = bool(strict)
        self.split_seed = int(split_seed)
        self.shuffle_seed = shuffle_seed
        self.persistent_workers = bool(persistent_workers)
        self.pin_memory = bool(pin_memory)
        self.rescale = rescale if isinstance(rescale, str) else tuple(float(v) for v in rescale)
        self.background = tuple(int(v) for v in background)
        self.fit = fit
        self.rules = SourceRules(
            image_size=self.image_size,
            max_image_pixels=None if max_image_pixels is None else int(max_image_pixels),
            large_image_pixels=int(large_image_pixels),
            bands=tuple(int(b) for b in bands) if bands else None,
            overview=int(overview),
            rescale=self.rescale,
        )
        self.max_nodata_fraction = float(max_nodata_fraction)
        self.cache_dir = str(cache_dir)
        self.save_hyperparameters(logger=False)
        self._files: list[str] | None = None
        self._sizes: list[tuple[int, int]] = []
        self._shards: Path | None = None  # root is a shard directory (rockgen.data.shards)
        self._rasters: list[Raster | None] = []  # per file: read by window, or None (decoded whole)
        self._cells: list[np.ndarray | None] = []  # per raster file: its usable grid cells
        self.train_files: list[str] = []  # after setup("fit"): the split, for logging / reproducibility
        self.val_files: list[str] = []
        self.train_set: TileDataset | None = None
        self.val_set: TileDataset | Subset | None = None
        self.predict_set: TileDataset | None = None
        self.per_rank_batch_size = self.batch_size
        self.per_rank_val_batch_size = self.val_batch_size or self.batch_size

    # ------------------------------------------------------------------ discovery
    @property
    def data_root(self) -> Path:
        """The folder that is searched (or the one file): ``root``, or ``demo_dir`` for demo data."""
        return Path(self.root if self.root is not None else self.demo_dir).expanduser()

    def prepare_data(self) -> None:
        """Generate (or find cached) demo PNGs; Lightning runs this on one process per node."""
        if self.root is None:
            self._write_demo()

    def _write_demo(self) -> None:
        write_demo_dataset(self.demo_dir, self.demo_num_per_class, self.demo_size, self.demo_seed)

    def _scan(self) -> None:
        if self._files is not None:
            return
        if self.root is None:
            self._write_demo()  # cached: returns at once after prepare_data
        root = self.data_root
        self._shards = manifest_path(root) if self.root is not None else None
        if self._shards is not None:  # one stat, no directory listing: the manifest knows the tiles
            self._files = read_manifest(self._shards, self.image_size)["groups"]
            return
        found = [root] if root.is_file() else find_images(root, self.extensions, self.zoom)
        files, probed = probe_images(found, strict=self.strict, probe=self.rules.probe)
        sizes = [(w, h) for w, h, _ in probed]
        rasters = [r for _, _, r in probed]
        big = [r is None and w * h > self.rules.large_image_pixels for w, h, r in probed]
        cached = open_large_sources(files, sizes, big, self.cache_dir, self.rescale, self.background)
        rasters = [r if r is not None else c for r, c in zip(rasters, cached, strict=True)]
        if self.fit == "resize" and any(r is not None for r in rasters):
            first = next(r for r in rasters if r is not None)
            raise SettingError(first.path, "data.fit=resize reads whole images; this file is read by window")
        s = self.image_size
        cells = [None if r is None else valid_cells(r, s, self.max_nodata_fraction, self.background) for r in rasters]
        self._files, self._sizes, self._rasters, self._cells = files, sizes, rasters, cells

    @property
    def files(self) -> list[str]:
        """All readable source files, sorted by relative path; ``source`` and ``labels()`` index this list."""
        self._scan()
        return list(self._files)

    def labels(self) -> list[str]:
        """Folder of each file relative to the data root (``""`` at top level): the rock type for demos."""
        keys = relative_keys(self.files, self._key_root())
        return [k.rsplit("/", 1)[0] if "/" in k else "" for k in keys]

    # ------------------------------------------------------------------ setup
    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def _split_batch(self, name: str, value: int, world: int) -> int:
        return split_global_batch(name, value, world)

    def setup(self, stage: str | None = None) -> None:
        """Scan files once, split train/val by source file, build the datasets for ``stage``."""
        world = self._world_size()
        self.per_rank_batch_size = self._split_batch("batch_size", self.batch_size, world)
        if self.val_batch_size is None:
            self.per_rank_val_batch_size = self.per_rank_batch_size
        else:
            self.per_rank_val_batch_size = self._split_batch("val_batch_size", self.val_batch_size, world)
        self._scan()
        if self._shards is not None:
            return self._setup_shards(stage)
        if stage in (None, "fit", "validate") and self.train_set is None:
            (train_files, train_cells), (val_files, val_cells) = self._split()
            self.train_files, self.val_files = train_files, val_files
            if not train_files:
                raise ValueError(f"no training files left after the validation split of {self.data_root}")
            mode = "random_crop" if self.crop == "random" else "grid"
            self.train_set = self._dataset(train_files, mode, self.augment, train_cells)
            if val_files:
                val = self._dataset(val_files, "grid", None, val_cells)
                self.val_set = _evenly_spaced(val, self.val_max_items)
            else:
                warnings.warn(
                    f"no validation files: {len(self._files)} file(s) with val_fraction={self.val_fraction}; "
                    "validation is skipped",
                    UserWarning,
                    stacklevel=2,
                )
                self.val_set = None
        if stage in (None, "predict") and self.predict_set is None:
            mode = "grid" if self.crop == "grid" else "center_crop"
            self.predict_set = self._dataset(self._files, mode, None, dict(zip(self._files, self._cells, strict=True)))

    def _setup_shards(self, stage: str | None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            seed = self.split_seed
            self.train_set, val = split_shards(self._shards, self.image_size, self.val_fraction, seed, self.augment)
            self.val_set = None if val is None else _evenly_spaced(val, self.val_max_items)
            if val is None:
                warnings.warn(f"no validation tiles in {self._shards}: validation is skipped", stacklevel=3)
        if stage in (None, "predict") and self.predict_set is None:
            self.predict_set = ShardDataset(self._shards, self.image_size)

    def item_groups(self) -> list[str]:
        """Split group of each predict item (grid tiles): what ``task=convert`` stores with each tile."""
        if self.predict_set is None:
            self.setup("predict")
        ds, out = self.predict_set, []
        groups = self._groups()
        for f, count in enumerate(ds.counts.tolist()):
            g = groups[self._files.index(ds.files[f])]
            out += [g] * count if isinstance(g, str) else [g[k] for k in range(count)]
        return out

    def _groups(self) -> list:
        """Per file its split group (str), or for a windowed raster one group per usable grid cell (list)."""
        keys = relative_keys(self._files, self._key_root())
        groups = xyz_block_groups(keys, self.xyz_split_block) if self.xyz_split_block else list(keys)
        block = self.xyz_split_block or 8
        return [
            groups[f] if r is None else split_cells(keys[f], self._cells[f], r.width // self.image_size, block)[0]
            for f, r in enumerate(self._rasters)
        ]

    def _key_root(self) -> Path:
        return self.data_root.parent if self.data_root.is_file() else self.data_root

    def _split(self):
        """``((train_files, train_cells), (val_files, val_cells))``: small files by file (XYZ tiles by block),
        windowed rasters by ``xyz_split_block``-square blocks of grid cells, all ranked by one rule."""
        groups = self._groups()
        held = held_out_groups(
            [g for gs in groups for g in ([gs] if isinstance(gs, str) else gs)], self.val_fraction, self.split_seed
        )
        train, val = ([], {}), ([], {})
        for f, path in enumerate(self._files):
            if isinstance(groups[f], str):
                (val if groups[f] in held else train)[0].append(path)
                continue
            in_val = np.fromiter((g in held for g in groups[f]), bool, count=len(groups[f]))
            for side, c in ((train, self._cells[f][~in_val]), (val, self._cells[f][in_val])):
                if len(c):
                    side[0].append(path)
                    side[1][path] = c
        return train, val

    def _dataset(self, files, mode, augment, cells) -> TileDataset:
        index = {f: i for i, f in enumerate(self._files)}
        return TileDataset(
            files,
            self.image_size,
            mode=mode,
            augment=augment,
            strict=self.strict,
            sizes=[self._sizes[index[f]] for f in files],
            rescale=self.rescale,
            background=self.background,
            fit=self.fit,
            rasters=[self._rasters[index[f]] for f in files],
            cells=[cells.get(f) for f in files],
            max_nodata_fraction=self.max_nodata_fraction,
        )

    # ------------------------------------------------------------------ loaders
    def _loader(
        self, dataset, batch_size: int, shuffle: bool, drop_last: bool, sampler=None, cls=DataLoader
    ) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        on_cuda = trainer is not None and getattr(trainer.strategy.root_device, "type", "cpu") == "cuda"
        return cls(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            pin_memory=self.pin_memory and on_cuda and torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        world = self._world_size()
        if len(self.train_set) < self.per_rank_batch_size * world:
            raise ValueError(
                f"only {len(self.train_set)} training tiles but a global batch of "
                f"{self.per_rank_batch_size * world} with drop_last: lower data.batch_size or add data"
            )
        sampler = epoch_sampler(self, self.train_set, self.shuffle_seed)
        loader = self._loader(
            self.train_set, self.per_rank_batch_size, False, True, sampler=sampler, cls=ResumableLoader
        )
        loader.consumed_batches = partial(consumed_train_batches, self)
        return loader

    def val_dataloader(self):
        if self.train_set is None:
            self.setup("validate")
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.per_rank_val_batch_size, shuffle=False, drop_last=False)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_set is None:
            self.setup("predict")
        return self._loader(self.predict_set, self.per_rank_val_batch_size, shuffle=False, drop_last=False)

    # ------------------------------------------------------------------ predict bookkeeping
    def predict_sources(self) -> list[int]:
        """Index into ``files`` of each predict item (item ``i`` of the predict set is cut from this file)."""
        if self.predict_set is None:
            self.setup("predict")
        ds = self.predict_set
        if isinstance(ds, ShardDataset):  # the tiles' split groups stand in for files
            return ds.group_ids[ds.indices].tolist()
        return np.repeat(np.arange(len(ds.files)), ds.counts).tolist()

    def predict_paths(self) -> list[str]:
        """Source file path of each predict item, in dataset (``index``) order: the rows of a latents file."""
        files = self.files
        return [files[s] for s in self.predict_sources()]


def _evenly_spaced(dataset: TileDataset, max_items: int | None):
    """At most ``max_items`` items at evenly spaced indices (spans all files); the dataset if fewer."""
    if max_items is None or len(dataset) <= max_items:
        return dataset
    idx = np.linspace(0, len(dataset) - 1, int(max_items)).round().astype(np.int64)
    return Subset(dataset, np.unique(idx).tolist())
