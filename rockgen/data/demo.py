"""Embedded demo data: procedurally generated rock-like RGB tiles in several visually distinct rock types.

Lets every command run with no data set at hand (``data.root=null``). Each class imitates a nadir drone photo
at about 2 cm/pixel, so features have fixed sizes in pixels (a larger tile shows more stones, not bigger
ones):

* ``cobbles``   rounded, shaded stones (8-30 cm) of varied lithology in a sandy matrix, with cast shadows.
* ``layered``   bedded strata: bands of varied thickness and tone, tilted and gently folded, resistant beds
  standing proud, fine lamination.
* ``fractured`` massive pale rock cut by two or three joint sets of dark, discontinuous, wavy fractures with
  iron staining.
* ``gravel``    dense small angular clasts (Voronoi cells with chamfered, tilted facets) and dark gaps.
* ``granite``   coarse crystalline speckle: pink/white feldspar, grey quartz, clustered black biotite.

Only numpy, float64, and operations whose results IEEE-754 fixes exactly (+ - * / sqrt, no sin/exp/pow or
BLAS), with ``numpy.random.Generator(PCG64)`` using ``random()``/``integers()`` only: the pixels are the same
on every machine for a given numpy version (PNG bytes also depend on the zlib build; ``manifest.json`` stores
a SHA-256 of the pixels). ``write_demo_dataset`` writes ``out_dir/<class>/<class>_0000.png`` (folder = label)
and caches.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rockgen.data.procedural import (
    Rng,
    blur,
    cast_shadow,
    cell_voronoi,
    fbm,
    grid,
    hillshade,
    lattice_sample,
    pick,
    rgb,
    sq,
    unit_vector,
    value_noise,
)

DEMO_VERSION = 1


STONE_COLOURS = rgb("8a8580", "a39a8c", "6e6a66", "b5aa98", "8c7560", "9e8a78", "5f5a55", "c2b8a8", "7d6a5a")
MATRIX_COLOURS = rgb("a08c70", "8f7d66", "b09a7a", "7f7060")
BED_COLOURS = rgb("c9b48f", "6f6a66", "9a8a78", "d4cbbd", "a0614a", "857a6a", "b8a27e", "57524f")
MASSIVE_COLOURS = rgb("b9b2a8", "c8bba6", "a8a39d", "bfae9c", "9e9a92")
GRAVEL_COLOURS = rgb("8d8a86", "a49c90", "6c6965", "b7ad9f", "8f7866", "5a5753", "c9c0b2", "9a8f80", "7a5f50")
FELDSPAR = rgb("d9a89a", "e3c4b5", "c98f7f", "ece4dc")
QUARTZ = rgb("a9a8a6", "bdbcb8", "8f8e8c")
BIOTITE = rgb("242220", "35312c", "1b1a19")


# --------------------------------------------------------------------------------------------- rock types
def _ground(rng: Rng, size: int, colours: np.ndarray, jitter: float, texture: tuple, speckle: tuple[float, float]):
    """Pixel grid, light direction and a base colour (one of ``colours``, ± ``jitter``) modulated by fBm
    ``texture`` = (scale, octaves, offset, gain) and per-pixel ``speckle`` = (offset, gain).

    Returns (yy, xx, light, colour (S, S, 3), the fBm texture (S, S))."""
    yy, xx = grid(size, size)
    light = unit_vector(rng)
    base = pick(rng, colours, 1, jitter)[0]
    scale, octaves, offset, gain = texture
    noise = fbm(rng, yy, xx, scale, octaves)
    colour = base * (offset + gain * noise)[..., None] * (speckle[0] + speckle[1] * rng.random((size, size, 1)))
    return yy, xx, light, colour, noise


def _cobbles(rng: Rng, size: int) -> np.ndarray:
    yy, xx, light, colour, _ = _ground(rng, size, MATRIX_COLOURS, 0.12, (6.0, 3, 0.85, 0.3), (0.9, 0.2))
    height = 1.5 * fbm(rng, yy, xx, 20.0, 2)
    # Rejection-sample stones, radii 4..15 px (8-30 cm) skewed small; neighbours may touch, barely overlap.
    stones: list[tuple[float, float, float]] = []
    target = int(size * size / 150) + 4
    for _ in range(target * 12):
        if len(stones) >= target:
            break
        u = rng.random()
        r = 4.0 + 11.0 * u * u
        cy, cx = rng.random(2) * (size + 2 * r) - r
        if all(sq(cy - sy) + sq(cx - sx) > sq(0.85 * (r + sr)) for sy, sx, sr in stones):
            stones.append((cy, cx, r))
    edge = value_noise(rng, yy, xx, 5.0) - 0.5
    speckles = [fbm(rng, yy, xx, cell, 2) for cell in (2.0, 3.5, 6.0)]
    for cy, cx, r in stones:
        uy, ux = unit_vector(rng)
        aspect = 0.6 + 0.4 * rng.random()
        stone_col = pick(rng, STONE_COLOURS, 1, 0.18)[0]
        which, contrast = int(rng.integers(0, 3)), 0.1 + 0.25 * rng.random()
        # Work in the stone's bounding box only (edge noise can push the outline out by ~10%).
        y0, y1 = max(0, int(cy - 1.2 * r)), min(size, int(cy + 1.2 * r) + 2)
        x0, x1 = max(0, int(cx - 1.2 * r)), min(size, int(cx + 1.2 * r) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        box = (slice(y0, y1), slice(x0, x1))
        dy, dx = yy[box] - cy, xx[box] - cx
        along, across = (dy * uy + dx * ux) / r, (dx * uy - dy * ux) / (r * aspect)
        q2 = (along * along + across * across) * (1.0 + 0.35 * edge[box])
        inside = q2 < 1.0
        dome = np.sqrt(np.clip(1.0 - q2, 0.0, 1.0)) * (0.6 * r)
        speckle = 1.0 - contrast / 2.0 + contrast * speckles[which][box]
        colour[box] = np.where(inside[..., None], stone_col * speckle[..., None], colour[box])
        height[box] = np.where(inside, np.maximum(height[box], 1.0 + dome), height[box])
    shade = hillshade(blur(height), light) * cast_shadow(height, light)
    return colour * shade[..., None]


def _layered(rng: Rng, size: int) -> np.ndarray:
    yy, xx = grid(size, size)
    light = unit_vector(rng)
    uy, ux = unit_vector(rng)  # bedding-normal direction (dip azimuth on the ground)
    along = yy * ux - xx * uy  # coordinate along strike
    fold_amp = 4.0 + 18.0 * rng.random()
    fold = fold_amp * (value_noise(rng, np.zeros_like(along), along, 40.0 + 60.0 * rng.random()) - 0.5)
    depth = yy * uy + xx * ux + fold + 3.0 * (fbm(rng, yy, xx, 16.0, 3) - 0.5)
    # A stratigraphic column: bed thickness 2..22 px (skewed thin), colour and hardness per bed.
    lo, hi = float(depth.min()) - 1.0, float(depth.max()) + 1.0
    tops = [lo]
    while tops[-1] < hi:
        u = rng.random()
        tops.append(tops[-1] + 2.0 + 20.0 * u * u)
    tops_arr = np.asarray(tops)
    bed = np.clip(np.searchsorted(tops_arr, depth, side="right") - 1, 0, len(tops) - 1)
    n_beds = len(tops)
    lith = rng.integers(0, len(BED_COLOURS), n_beds)
    for i in range(2, n_beds):  # beds repeat in cycles: often the same lithology as two beds below
        if rng.random() < 0.35:
            lith[i] = lith[i - 2]
    cols = BED_COLOURS[lith] * (0.9 + 0.2 * rng.random((n_beds, 1)))
    hardness = rng.random(n_beds)
    within = (depth - tops_arr[bed]) / (tops_arr[np.minimum(bed + 1, n_beds - 1)] - tops_arr[bed] + 1e-9)
    lamination = value_noise(rng, np.zeros_like(depth), depth, 0.9 + 0.8 * rng.random())
    tone = 0.9 + 0.12 * lamination + 0.06 * (fbm(rng, yy, xx, 5.0, 3) - 0.5)
    colour = cols[bed] * tone[..., None] * (0.95 + 0.1 * rng.random((size, size, 1)))
    # Resistant beds stand proud with rounded edges; soft beds are recessed.
    height = 2.5 * hardness[bed] * (1.0 - sq(sq(2.0 * within - 1.0))) + 0.6 * lamination
    shade = hillshade(blur(height), light) * cast_shadow(height, light, steps=3)
    return colour * shade[..., None]


def _fractured(rng: Rng, size: int) -> np.ndarray:
    yy, xx, light, colour, mottle = _ground(rng, size, MASSIVE_COLOURS, 0.1, (18.0, 4, 0.88, 0.22), (0.96, 0.08))
    crack = np.zeros((size, size))
    stain = np.zeros((size, size))
    n_sets = 2 + int(rng.random() < 0.5)
    first = unit_vector(rng)
    for s in range(n_sets):
        if s == 0:
            ny_, nx_ = first
        elif s == 1:  # second set roughly orthogonal to the first (conjugate joints)
            jy, jx = unit_vector(rng)
            ny_, nx_ = -first[1] + 0.35 * jy, first[0] + 0.35 * jx
            norm = np.sqrt(ny_ * ny_ + nx_ * nx_)
            ny_, nx_ = ny_ / norm, nx_ / norm
        else:
            ny_, nx_ = unit_vector(rng)
        spacing = 12.0 + 26.0 * rng.random()
        normal = yy * ny_ + xx * nx_
        strike = xx * ny_ - yy * nx_
        wavy = 4.0 * (value_noise(rng, normal / 3.0, strike, 14.0) - 0.5)
        phase = normal + wavy + rng.random() * spacing
        dist = np.abs(phase - spacing * np.floor(phase / spacing + 0.5))  # distance to the nearest joint
        line_id = np.floor(phase / spacing + 0.5)
        # Joints end and restart: a slow on/off noise along strike, different for each joint.
        lat = rng.random((64, 64))
        present = lattice_sample(lat, line_id * 3.7, strike / 45.0) > 0.25 + 0.3 * rng.random()
        strength = 0.5 + 0.5 * lattice_sample(lat, line_id * 3.7 + 17.0, strike / 9.0)
        width = 0.7 + 1.0 * rng.random()
        crack = np.maximum(crack, present * strength * np.clip(1.0 - dist / width, 0.0, 1.0))
        stain = np.maximum(stain, present * np.clip(1.0 - dist / (3.0 * width + 2.5), 0.0, 1.0))
    iron = np.array([0.62, 0.45, 0.3])
    colour = colour * (1.0 - 0.3 * stain[..., None]) + iron * (0.3 * stain[..., None])
    # Lichen and weathering patches: thresholded noise, grey-green or orange.
    lichen = np.clip((fbm(rng, yy, xx, 7.0, 3) - 0.62) * 8.0, 0.0, 1.0) * (rng.random() < 0.7)
    lichen_col = np.array([0.58, 0.6, 0.5]) if rng.random() < 0.6 else np.array([0.75, 0.55, 0.3])
    colour = colour + (lichen_col - colour) * (0.6 * lichen[..., None])
    colour = colour * (1.0 - 0.85 * crack[..., None])
    height = 1.5 * mottle + 0.6 * fbm(rng, yy, xx, 4.0, 2) - 0.8 * crack
    return colour * hillshade(blur(height), light)[..., None]


def _gravel(rng: Rng, size: int) -> np.ndarray:
    yy, xx = grid(size, size)
    light = unit_vector(rng)
    spacing = 5.0 + 4.0 * rng.random()
    f1, f2, ids, pts = cell_voronoi(rng, yy, xx, spacing, 0.9)  # power diagram: varied clast sizes
    n = len(pts)
    # (f2 - f1) / (2 * d_between) is about the distance to the cell edge; flat-topped clasts with chamfers.
    edge = (f2 - f1) / (2.0 * spacing)
    tilt = (rng.random((n, 2)) * 2.0 - 1.0) * 0.5
    cy, cx = pts[ids, 0], pts[ids, 1]
    facet = tilt[ids, 0] * (yy - cy) + tilt[ids, 1] * (xx - cx)
    height = np.minimum(edge, 1.8) * 1.6 + facet + 0.5 * rng.random(n)[ids]
    cols = pick(rng, GRAVEL_COLOURS, n, 0.2) * 1.1
    grain = 0.92 + 0.16 * fbm(rng, yy, xx, 2.0, 2)
    colour = cols[ids] * grain[..., None]
    gap = np.clip(edge / 0.35, 0.0, 1.0)  # dark interstices between clasts
    matrix = np.array([0.25, 0.22, 0.19])
    colour = matrix + (colour - matrix) * gap[..., None]
    shade = hillshade(height, light) * cast_shadow(height, light, steps=3)
    return colour * shade[..., None]


def _granite(rng: Rng, size: int) -> np.ndarray:
    yy, xx = grid(size, size)
    light = unit_vector(rng)
    spacing = 3.0 + 2.0 * rng.random()
    f1, f2, ids, pts = cell_voronoi(rng, yy, xx, spacing, 0.8)
    n = len(pts)
    # Mineral by a noise field sampled at each crystal, so biotite and quartz cluster as in a real granite.
    field = value_noise(rng, pts[:, 0], pts[:, 1], 9.0)
    u = 0.55 * field + 0.45 * rng.random(n)
    biotite_cut, quartz_cut = 0.22 + 0.1 * rng.random(), 0.48 + 0.1 * rng.random()
    mineral = np.where(u < biotite_cut, 0, np.where(u < quartz_cut, 1, 2))
    tone = pick(rng, FELDSPAR[rng.integers(0, len(FELDSPAR), 2)], n, 0.08)  # 1-2 feldspar tones per tile
    tone = np.where((mineral == 1)[:, None], pick(rng, QUARTZ, n, 0.08), tone)
    tone = np.where((mineral == 0)[:, None], pick(rng, BIOTITE, n, 0.2), tone)
    boundary = np.clip((f2 - f1) / (0.6 * spacing * spacing), 0.0, 1.0)
    colour = tone[ids] * (0.85 + 0.15 * boundary)[..., None]
    colour *= (0.93 + 0.14 * fbm(rng, yy, xx, 24.0, 3))[..., None]
    height = 0.4 * boundary + 1.0 * fbm(rng, yy, xx, 30.0, 2)
    return colour * hillshade(height, light)[..., None]


ROCK_TYPES: dict[str, Callable[[Rng, int], np.ndarray]] = {
    "cobbles": _cobbles,
    "layered": _layered,
    "fractured": _fractured,
    "gravel": _gravel,
    "granite": _granite,
}


def make_demo_tile(kind: str, size: int, rng: Rng) -> np.ndarray:
    """One procedural tile of rock type ``kind`` (see :data:`ROCK_TYPES`) -> ``uint8 (size, size, 3)``.

    Adds a per-tile exposure/white-balance change and a little sensor noise, as between drone flights.
    """
    if kind not in ROCK_TYPES:
        raise ValueError(f"unknown demo rock type {kind!r}; choose from {sorted(ROCK_TYPES)}")
    if size < 8:
        raise ValueError(f"demo tiles need size >= 8, got {size}")
    img = ROCK_TYPES[kind](rng, size)
    exposure = 0.9 + 0.2 * rng.random()
    balance = 1.0 + (rng.random(3) * 2.0 - 1.0) * 0.04
    noise = (rng.random((size, size, 3)) - 0.5) * (3.0 / 255.0)
    img = img * exposure * balance + noise
    return np.clip(np.floor(img * 255.0 + 0.5), 0, 255).astype(np.uint8)


def tile_seed(seed: int, kind: str, i: int) -> list[int]:
    """Seed words for tile ``i`` of ``kind``: independent of the other classes and of the number of tiles."""
    return [int(seed), int.from_bytes(hashlib.sha256(kind.encode()).digest()[:4], "little"), int(i)]


def generate_demo_tiles(kind: str, num: int, size: int = 96, seed: int = 0) -> np.ndarray:
    """``num`` tiles of a kind -> ``uint8 (num, size, size, 3)``; tile ``i`` depends on (seed, kind, i)."""
    out = np.empty((num, size, size, 3), dtype=np.uint8)
    for i in range(num):
        out[i] = make_demo_tile(kind, size, np.random.Generator(np.random.PCG64(tile_seed(seed, kind, i))))
    return out


def _manifest(num_per_class: int, size: int, seed: int, classes: Sequence[str]) -> dict:
    return {
        "generator": "rockgen.data.demo",
        "version": DEMO_VERSION,
        "seed": int(seed),
        "size": int(size),
        "num_per_class": int(num_per_class),
        "classes": list(classes),
        "counts": {c: int(num_per_class) for c in classes},
    }


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write via a temporary file + rename: concurrent writers (one per node) never expose half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_demo_dataset(
    out_dir: str | os.PathLike,
    num_per_class: int = 64,
    size: int = 96,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> Path:
    """Write ``out_dir/<class>/<class>_0000.png`` for each class plus ``manifest.json``; returns ``out_dir``.

    If ``out_dir/manifest.json`` already describes the same (version, seed, size, num_per_class, classes) and
    every tile file exists, returns at once (cache). Otherwise regenerates; files of other classes or counts
    are left in place and the loader would see them, so give ``out_dir`` a folder of its own.
    """
    classes = list(ROCK_TYPES) if classes is None else list(classes)
    for kind in classes:
        if kind not in ROCK_TYPES:
            raise ValueError(f"unknown demo rock type {kind!r}; choose from {sorted(ROCK_TYPES)}")
    if num_per_class < 1:
        raise ValueError(f"num_per_class must be >= 1, got {num_per_class}")
    out = Path(out_dir).expanduser()
    manifest_path = out / "manifest.json"
    wanted = _manifest(num_per_class, size, seed, classes)
    if manifest_path.is_file():
        try:
            cached = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            cached = None
        expected = [out / k / f"{k}_{i:04d}.png" for k in classes for i in range(num_per_class)]
        if isinstance(cached, dict) and {k: cached.get(k) for k in wanted} == wanted:
            if all(p.is_file() for p in expected):  # a deleted tile makes the cache stale
                return out
    digest = hashlib.sha256()
    for kind in classes:
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        tiles = generate_demo_tiles(kind, num_per_class, size, seed)
        digest.update(tiles.tobytes())
        for i, tile in enumerate(tiles):
            image = Image.fromarray(tile)
            _atomic_write(folder / f"{kind}_{i:04d}.png", lambda p, im=image: im.save(p, format="PNG"))
    wanted["pixel_sha256"] = digest.hexdigest()
    text = json.dumps(wanted, indent=2) + "\n"
    _atomic_write(manifest_path, lambda p: Path(p).write_text(text))
    return out


def demo_grid(tiles_per_class: int = 8, size: int = 96, seed: int = 0, classes: Sequence[str] | None = None):
    """A preview ``uint8`` image: one row per class, ``tiles_per_class`` tiles each, 2-px gaps."""
    classes = list(ROCK_TYPES) if classes is None else list(classes)
    step = size + 2
    grid = np.full((len(classes) * step - 2, tiles_per_class * step - 2, 3), 255, dtype=np.uint8)
    for r, kind in enumerate(classes):
        for c, tile in enumerate(generate_demo_tiles(kind, tiles_per_class, size, seed)):
            grid[r * step : r * step + size, c * step : c * step + size] = tile
    return grid
