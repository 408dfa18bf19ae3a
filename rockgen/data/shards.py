"""Sharded tile datasets in LMDB: written once by ``task=convert``, read by training with no directory listing.

Layout of a shard directory ``out/``::

    rockgen-shards.json     manifest: image_size, tile count, per shard file/count/bytes, group names
    groups.npy              int32 (N,): each tile's split group (index into the manifest's "groups")
    tiles-00000.lmdb ...    LMDB single-file environments, key = global tile index (8 bytes, big endian),
                            value = uint8 (S, S, 3) raw pixels + CRC-32 (4 bytes, little endian)

Why LMDB (not WebDataset / LitData): rockgen's training order is a resumable, world-size-independent
permutation of item indices (``rockgen.data.sampler.EpochSampler``), which needs random access by index; LMDB
is a memory-mapped B+tree with O(log n) reads by key, no server, one file per shard, safe for many reader
processes, and a tiny well-kept dependency. WebDataset/LitData stream tar or chunk files sequentially, so the
exact order and mid-epoch resume would have to be rebuilt on top of their own shuffling.

Tiles are the grid tiles of the source (files, XYZ pyramids, windowed orthomosaics with nodata cells dropped);
each keeps its source's split group (file, XYZ block or raster block), so ``val_fraction``/``split_seed`` hold
out the same sources as training on the folder. D4 augmentation is drawn per item from the sampler's seed.
A truncated shard (size differs from the manifest), a record that fails its CRC, or a shard written at
another ``image_size`` is a :class:`ShardError` naming the file.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from rockgen.data.split import held_out_groups
from rockgen.data.tiles import d4_augment, normalize_augment, to_model_range

MANIFEST = "rockgen-shards.json"
FORMAT = "rockgen-lmdb-tiles/1"


class ShardError(OSError):
    """A shard directory that does not match its manifest or the run's settings (names the file)."""


def import_lmdb():
    try:
        import lmdb
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("sharded datasets need lmdb: pip install 'rockgen[shards]'") from exc
    return lmdb


def manifest_path(root: str | os.PathLike) -> Path | None:
    """``root/rockgen-shards.json`` (or ``root`` itself) if it is a shard manifest, else ``None`` (one stat)."""
    root = Path(root).expanduser()
    if root.name == MANIFEST and root.is_file():
        return root
    candidate = root / MANIFEST
    return candidate if candidate.is_file() else None


def write_shards(
    tiles: Iterable[tuple[np.ndarray, str]],
    out: str | os.PathLike,
    image_size: int,
    total: int,
    shard_tiles: int = 50_000,
    progress: bool = True,
    meta: Mapping | None = None,
) -> Path:
    """Write ``(uint8 (S, S, 3) tile, group)`` pairs into LMDB shards under ``out`` -> the manifest path.

    The manifest is written last (atomically): a directory without it is not a dataset, so a killed convert
    is never mistaken for a finished one.
    """
    lmdb = import_lmdb()
    out = Path(out).expanduser()
    if manifest_path(out) is not None:
        raise ShardError(f"{out / MANIFEST} exists: choose another out= or delete the old shards first")
    out.mkdir(parents=True, exist_ok=True)
    record = image_size * image_size * 3
    shards, groups, group_ids = [], {}, []
    env = txn = None
    index = 0

    def close(env, txn, name, count):
        txn.commit()
        env.sync()
        env.close()
        shards.append({"file": name, "count": count, "bytes": (out / name).stat().st_size})

    bar = tqdm(total=total, desc=f"writing shards to {out}", unit="tile", disable=not progress)
    count = 0
    for tile, group in tiles:
        if tile.shape != (image_size, image_size, 3) or tile.dtype != np.uint8:
            raise ValueError(f"tile {index} is {tile.shape} {tile.dtype}, expected ({image_size}, {image_size}, 3)")
        if env is None:
            name = f"tiles-{len(shards):05d}.lmdb"
            env = lmdb.open(
                str(out / name), subdir=False, map_size=(shard_tiles * (record + 64) + 2**20) * 2, lock=False
            )
            txn, count = env.begin(write=True), 0
        raw = np.ascontiguousarray(tile).tobytes()
        txn.put(index.to_bytes(8, "big"), raw + zlib.crc32(raw).to_bytes(4, "little"))
        group_ids.append(groups.setdefault(str(group), len(groups)))
        index, count = index + 1, count + 1
        bar.update(1)
        if count == shard_tiles:
            close(env, txn, name, count)
            env = None
    if env is not None:
        close(env, txn, name, count)
    bar.close()
    if index == 0:
        raise ShardError(f"no tiles to write into {out}")
    np.save(out / "groups.npy", np.asarray(group_ids, np.int32))
    manifest = {"format": FORMAT, "image_size": image_size, "count": index, "shards": shards}
    manifest.update({"groups": list(groups), "meta": dict(meta or {})})
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / MANIFEST)
    return out / MANIFEST


def read_manifest(path: str | os.PathLike, image_size: int) -> dict:
    """Load and check a manifest: format, ``image_size``, every shard present at its recorded size."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ShardError(f"cannot read shard manifest {path}: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest["image_size"] != image_size:
        raise ShardError(
            f"{path}: shards hold {manifest['image_size']} px tiles but data.image_size={image_size}; "
            f"convert again at {image_size} px or set data.image_size={manifest['image_size']}"
        )
    for shard in manifest["shards"]:
        file = path.parent / shard["file"]
        size = file.stat().st_size if file.is_file() else None
        if size != shard["bytes"]:
            raise ShardError(
                f"shard {file} is {'missing' if size is None else f'{size} bytes'}, the manifest records "
                f"{shard['bytes']} bytes: truncated or replaced; convert again"
            )
    ids = np.load(path.parent / "groups.npy", mmap_mode="r")
    if len(ids) != manifest["count"]:
        raise ShardError(f"{path.parent / 'groups.npy'} has {len(ids)} entries for {manifest['count']} tiles")
    return manifest


_ENVS: dict[str, object] = {}  # LMDB allows one environment per file per process: train and val share it
_ENVS_PID = [-1]


def open_shard(file: Path):
    """This process's read-only LMDB environment of ``file`` (opened once; a forked worker opens its own)."""
    if _ENVS_PID[0] != os.getpid():
        _ENVS.clear()
        _ENVS_PID[0] = os.getpid()
    key = str(file)
    if key not in _ENVS:
        lmdb = import_lmdb()
        try:
            _ENVS[key] = lmdb.open(key, subdir=False, readonly=True, lock=False, readahead=False)
        except lmdb.Error as exc:
            raise ShardError(f"cannot open shard {file}: {exc}") from exc
    return _ENVS[key]


class ShardDataset(Dataset):
    """Tiles of a shard directory. Item: ``{"img": (3, S, S) float32 in [-1, 1], "index", "source"}``.

    ``indices`` selects global tiles (a train or val split); item ``i`` is tile ``indices[i]`` and ``source``
    is its split group number. Indexed with ``(i, seed)`` (``EpochSampler``) the D4 flips come from ``seed``.
    """

    def __init__(self, manifest: str | os.PathLike, image_size: int, indices=None, augment=None):
        self.manifest_file = Path(manifest)
        self.manifest = read_manifest(self.manifest_file, image_size)
        self.image_size = int(image_size)
        self.augment = normalize_augment(augment)
        self.indices = np.arange(self.manifest["count"]) if indices is None else np.asarray(indices, np.int64)
        counts = [s["count"] for s in self.manifest["shards"]]
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.group_ids = np.load(self.manifest_file.parent / "groups.npy")

    def __len__(self) -> int:
        return len(self.indices)

    def _env(self, shard: int):
        return open_shard(self.manifest_file.parent / self.manifest["shards"][shard]["file"])

    def tile(self, tile_index: int) -> np.ndarray:
        """Global tile ``tile_index`` as ``uint8 (S, S, 3)``; a bad record raises :class:`ShardError`."""
        shard = int(np.searchsorted(self.offsets, tile_index, side="right")) - 1
        file = self.manifest_file.parent / self.manifest["shards"][shard]["file"]
        with self._env(shard).begin(buffers=False) as txn:
            value = txn.get(int(tile_index).to_bytes(8, "big"))
        s = self.image_size
        if value is None or len(value) != s * s * 3 + 4:
            raise ShardError(f"shard {file}: record {tile_index} is missing or truncated")
        raw, crc = value[:-4], int.from_bytes(value[-4:], "little")
        if zlib.crc32(raw) != crc:
            raise ShardError(f"shard {file}: record {tile_index} fails its CRC-32 (corrupted)")
        return np.frombuffer(raw, np.uint8).reshape(s, s, 3)

    def __getitem__(self, index) -> dict:
        gen = None
        if isinstance(index, tuple):
            index, seed = index
            gen = torch.Generator().manual_seed(int(seed))
        tile_index = int(self.indices[int(index)])
        x = d4_augment(to_model_range(self.tile(tile_index)), self.augment, gen)
        return {"img": x, "index": int(index), "source": int(self.group_ids[tile_index])}


def split_shards(manifest: str | os.PathLike, image_size: int, val_fraction: float, seed: int, augment):
    """``(train, val | None)`` ShardDatasets: whole groups held out by :func:`held_out_groups` (the folder's rule)."""
    full = ShardDataset(manifest, image_size)
    names = full.manifest["groups"]
    held = held_out_groups(names, val_fraction, seed)
    held_ids = np.asarray([i for i, g in enumerate(names) if g in held], np.int64)
    is_val = np.isin(full.group_ids, held_ids)
    train = ShardDataset(manifest, image_size, np.flatnonzero(~is_val), augment)
    val = ShardDataset(manifest, image_size, np.flatnonzero(is_val)) if is_val.any() else None
    return train, val
