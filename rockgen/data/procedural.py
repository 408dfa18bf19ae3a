"""Procedural texture primitives of the demo tiles: value noise, fBm, blur, hill shading, cast shadows,
Voronoi cells, palettes.

Deterministic across machines for a numpy version: numpy float64, only operations whose results IEEE-754 fixes
exactly (+ - * / sqrt; no sin/exp/pow or BLAS), ``numpy.random.Generator(PCG64)`` with ``random()``/
``integers()`` only (see ``rockgen.data.demo``).
"""

from __future__ import annotations

import numpy as np

Rng = np.random.Generator


def _fade(t: np.ndarray) -> np.ndarray:
    """Quintic smoothstep 6t^5 - 15t^4 + 10t^3 (C2-continuous value noise)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def lattice_sample(lat: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smoothly interpolated lattice values at float coordinates (rows ``u``, columns ``v``); wraps around."""
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = _fade(u - iu), _fade(v - iv)
    n0, n1 = lat.shape
    i0, j0 = iu.astype(np.int64) % n0, iv.astype(np.int64) % n1
    i1, j1 = (i0 + 1) % n0, (j0 + 1) % n1
    top = lat[i0, j0] + (lat[i0, j1] - lat[i0, j0]) * fv
    bottom = lat[i1, j0] + (lat[i1, j1] - lat[i1, j0]) * fv
    return top + (bottom - top) * fu


def sq(x):
    """``x * x`` as a product: ``**`` may go through libm ``pow``, whose last bit varies by platform."""
    return x * x


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``yy, xx`` of shape ``(h, w)``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return yy + 0.5, xx + 0.5


def value_noise(rng: Rng, yy: np.ndarray, xx: np.ndarray, cell: float) -> np.ndarray:
    """Value noise in [0, 1] with feature size ``cell`` pixels, sampled at coordinates ``yy, xx``."""
    lat = rng.random((64, 64))
    off = rng.random(2) * 64.0
    return lattice_sample(lat, yy / cell + off[0], xx / cell + off[1])


def fbm(rng: Rng, yy: np.ndarray, xx: np.ndarray, cell: float, octaves: int = 4, gain: float = 0.5) -> np.ndarray:
    """Fractal sum of ``octaves`` value-noise layers (cell halves each octave), normalised to [0, 1]."""
    total, amp, norm = np.zeros_like(yy), 1.0, 0.0
    for _ in range(octaves):
        total += amp * value_noise(rng, yy, xx, cell)
        norm += amp
        amp *= gain
        cell *= 0.5
    return total / norm


def unit_vector(rng: Rng) -> tuple[float, float]:
    """A uniformly random 2-D direction by rejection (avoids sin/cos, whose last bit varies across libms)."""
    while True:
        a, b = rng.random(2) * 2.0 - 1.0
        r2 = a * a + b * b
        if 0.01 < r2 <= 1.0:
            r = np.sqrt(r2)
            return float(a / r), float(b / r)


def blur(a: np.ndarray, passes: int = 1) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur repeated ``passes`` times (edge-padded), on the last two axes."""
    for _ in range(passes):
        p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 1), (0, 0)], mode="edge")
        a = (p[..., :-2, :] + 2.0 * p[..., 1:-1, :] + p[..., 2:, :]) * 0.25
        p = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(1, 1)], mode="edge")
        a = (p[..., :-2] + 2.0 * p[..., 1:-1] + p[..., 2:]) * 0.25
    return a


def hillshade(height: np.ndarray, light: tuple[float, float], elevation: float = 0.75) -> np.ndarray:
    """Lambertian shading (1 on flat ground) of a height field in pixels, light from ``light`` (dy, dx)."""
    gy, gx = np.gradient(height)
    lz = elevation
    lxy = np.sqrt(1.0 - lz * lz)
    ly, lx = light[0] * lxy, light[1] * lxy
    shade = (-gx * lx - gy * ly + lz) / np.sqrt(gx * gx + gy * gy + 1.0)
    return np.clip(shade / lz, 0.0, 1.6)


def cast_shadow(height: np.ndarray, light: tuple[float, float], steps: int = 6, slope: float = 0.8) -> np.ndarray:
    """Soft cast-shadow factor in [0.55, 1]: a pixel is shaded when the height towards the light rises above a
    ray of the given slope (integer pixel steps along ``light``)."""
    h, w = height.shape
    occl = np.zeros_like(height)
    pad = steps + 1
    p = np.pad(height, pad, mode="edge")
    for s in range(1, steps + 1):
        dy, dx = int(np.floor(light[0] * s + 0.5)), int(np.floor(light[1] * s + 0.5))
        ahead = p[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        occl = np.maximum(occl, ahead - height - slope * s)
    return 1.0 - 0.45 * np.clip(occl / 3.0, 0.0, 1.0)


def cell_voronoi(rng: Rng, yy: np.ndarray, xx: np.ndarray, spacing: float, size_spread: float):
    """Voronoi cells of jittered-grid seeds about ``spacing`` px apart -> ``f1, f2, ids, seeds (n, 2)``.

    ``f1``/``f2`` are the nearest and second-nearest power distances (squared distance minus a per-seed
    weight in +-``size_spread`` * spacing^2 / 2, so cells vary in size); ``ids`` index ``seeds``. Each pixel
    only looks at the 5 x 5 grid cells around it, which holds all candidates for ``size_spread`` <= 1.
    """
    margin = 3
    ny = int(yy.max() / spacing) + 2 * margin + 1
    nx = int(xx.max() / spacing) + 2 * margin + 1
    gy, gx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    jitter = rng.random((2, ny, nx))
    seeds = np.stack([(gy + jitter[0] - margin) * spacing, (gx + jitter[1] - margin) * spacing], -1)
    weights = (rng.random((ny, nx)) - 0.5) * size_spread * spacing * spacing
    cy = np.floor(yy / spacing).astype(np.int64) + margin
    cx = np.floor(xx / spacing).astype(np.int64) + margin
    f1 = np.full(yy.shape, np.inf)
    f2 = np.full(yy.shape, np.inf)
    ids = np.zeros(yy.shape, dtype=np.int64)
    for oy in range(-2, 3):
        for ox in range(-2, 3):
            j, i = cy + oy, cx + ox
            dy, dx = yy - seeds[j, i, 0], xx - seeds[j, i, 1]
            d = dy * dy + dx * dx - weights[j, i]
            closer = d < f1
            f2 = np.where(closer, f1, np.minimum(f2, d))
            f1 = np.where(closer, d, f1)
            ids = np.where(closer, j * nx + i, ids)
    return f1, f2, ids, seeds.reshape(-1, 2)


def pick(rng: Rng, palette: np.ndarray, n: int, jitter: float) -> np.ndarray:
    """``n`` colours drawn from ``palette`` (k, 3) with +-``jitter`` brightness and +-jitter/5 per channel."""
    base = palette[rng.integers(0, len(palette), n)]
    bright = 1.0 + (rng.random((n, 1)) * 2.0 - 1.0) * jitter
    tint = 1.0 + (rng.random((n, 3)) * 2.0 - 1.0) * (jitter / 5.0)
    return base * bright * tint


def rgb(*hex_colours: str) -> np.ndarray:
    return np.array([[int(c[i : i + 2], 16) / 255.0 for i in (0, 2, 4)] for c in hex_colours])
