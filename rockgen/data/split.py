"""Deterministic train/val split by source (file, XYZ block or block of a large raster): nothing leaks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rockgen.data.images import parse_xyz


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
    val_groups = held_out_groups(groups, val_fraction, seed)
    train = [f for f, g in zip(files, groups, strict=True) if g not in val_groups]
    val = [f for f, g in zip(files, groups, strict=True) if g in val_groups]
    return train, val


def held_out_groups(groups: Iterable[str], val_fraction: float, seed: int = 0) -> set[str]:
    """The validation groups of :func:`split_files`' rule: the lowest ``round(val_fraction * n)`` of the
    distinct groups ranked by SHA-256 of ``"{seed}/{group}"``, at least one when there are >= 2, never all."""
    unique = sorted(set(groups))
    n_val = 0
    if val_fraction > 0 and len(unique) >= 2:
        n_val = min(len(unique) - 1, max(1, int(val_fraction * len(unique) + 0.5)))

    def rank(group: str) -> tuple[bytes, str]:
        return hashlib.sha256(f"{seed}/{group}".encode()).digest(), group

    return set(sorted(unique, key=rank)[:n_val])


def split_cells(
    key: str, cells: np.ndarray, columns: int, block: int, val_groups: set[str] | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Block groups of a large raster's grid cells -> ``(groups, train_cells, val_cells)``.

    Cell ``k`` (row-major over ``columns``) belongs to group ``"{key}#{row // block}/{col // block}"``:
    neighbouring tiles of one mosaic share content across their seams, so whole blocks go to one side.
    With ``val_groups`` None only ``groups`` is meaningful (the cells are returned unsplit as train).
    """
    rows, cols = cells // columns, cells % columns
    groups = [f"{key}#{r // block}/{c // block}" for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]
    if val_groups is None:
        return groups, cells, cells[:0]
    held = np.fromiter((g in val_groups for g in groups), bool, count=len(groups))
    return groups, cells[~held], cells[held]
