"""Large mosaics from a tile decoder: overlapping windows blended at every sampling step (MultiDiffusion).

Bar-Tal et al. 2023 ("MultiDiffusion"): the canvas x_t (1, C, H, W) is one diffusion state; at each step
every window w (a win×win crop) gets the network output o_w = f(x_t[w], t, z_w), and the canvas output is the
weighted average  o(p) = Σ_w m_w(p) o_w(p) / Σ_w m_w(p)  — the least-squares fusion of the windows'
predictions. ε̂, x̂_0 and v are affine in the network output at fixed (x_t, t), so fusing the output fuses
x̂_0 too, and any sampler over ``model_fn(x_t, t)`` (DDIM, DPM-Solver++, UniPC) then steps the whole canvas.
The weights m_w taper to a small floor over the overlap (a raised cosine), so no window edge shows.

Memory: network activations exist only for ``window_batch`` windows at a time; the canvas state and the
fused output are (1, C, H, W) float32 each (an 8192² RGB canvas: 0.8 GB per tensor).

:func:`diffae_mosaic` drives it with a DiffAE (``task=mosaic`` and the explorer's Mosaic tab).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rockgen.diffusion.schedules import Schedule
from rockgen.samplers import get_sampler, solver_options
from rockgen.samplers.ddim import map_state

WindowFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x (n,C,w,w), t (n,), idx (n,))


def window_origins(size: int, window: int, overlap: int) -> list[int]:
    """Top (or left) offsets of windows covering [0, size) with at least ``overlap`` px shared, last at the end."""
    if window < 1:
        raise ValueError(f"window must be >= 1 px, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in 0..window-1 = 0..{window - 1} px, got {overlap}")
    if size < window:
        raise ValueError(f"the mosaic ({size} px) is smaller than one window ({window} px): make it at least {window}")
    stride = window - overlap
    n = max(1, math.ceil((size - window) / stride) + 1)
    if n == 1:
        return [0]
    # Spread the windows evenly so every overlap is at least ``overlap`` (rounded positions, last = size - window).
    return [round(i * (size - window) / (n - 1)) for i in range(n)]


def window_weight(window: int, overlap: int, floor: float = 1e-3) -> torch.Tensor:
    """(window, window) blend weight: 1 inside, a raised-cosine ramp from ``floor`` over ``overlap`` px at the edges.

    Separable (ramp_y ⊗ ramp_x); the floor keeps Σ m_w > 0 at the canvas border, where only one window lies.
    """
    ramp = torch.ones(window, dtype=torch.float64)
    if overlap > 0:
        k = torch.arange(overlap, dtype=torch.float64)
        r = floor + (1 - floor) * 0.5 * (1 - torch.cos(math.pi * (k + 0.5) / overlap))
        ramp[:overlap] = torch.minimum(ramp[:overlap], r)
        ramp[-overlap:] = torch.minimum(ramp[-overlap:], r.flip(0))
    return (ramp[:, None] * ramp[None, :]).float()


class MosaicModel:
    """``model_fn(x_t, t)`` of a whole canvas (1, C, H, W): the blended outputs of all windows.

    ``window_fn(x, t, idx)`` runs the network on a batch of windows x (n, C, win, win) whose window numbers are
    idx (n,) (so the caller can give each its own z_sem); windows are numbered row-major over ``origins``.
    """

    def __init__(
        self,
        window_fn: WindowFn,
        height: int,
        width: int,
        window: int,
        overlap: int,
        window_batch: int = 16,
        progress: bool = False,
    ) -> None:
        if window_batch < 1:
            raise ValueError(f"window_batch must be >= 1, got {window_batch}")
        self.window_fn, self.window, self.batch, self.progress = window_fn, window, int(window_batch), progress
        self.rows = window_origins(height, window, overlap)
        self.cols = window_origins(width, window, overlap)
        self.origins = [(r, c) for r in self.rows for c in self.cols]
        self.weight = window_weight(window, overlap)
        self.height, self.width = height, width
        norm = torch.zeros(height, width)
        for r, c in self.origins:
            norm[r : r + window, c : c + window] += self.weight
        self.norm = norm

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    def centres(self) -> torch.Tensor:
        """Window centres (N, 2) in pixels (y, x), row-major like the window numbers."""
        h = self.window / 2
        return torch.tensor([(r + h, c + h) for r, c in self.origins], dtype=torch.float64)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (1, C, H, W), t (1,) → fused network output (1, C_out, H, W)."""
        w = self.window
        out = None
        weight = self.weight.to(x.device, x.dtype)
        for s in tqdm(range(0, len(self.origins), self.batch), desc="windows", disable=not self.progress, leave=False):
            chunk = self.origins[s : s + self.batch]
            xs = torch.cat([x[:, :, r : r + w, c : c + w] for r, c in chunk])
            idx = torch.arange(s, s + len(chunk), device=x.device)
            o = self.window_fn(xs, t[:1].expand(len(chunk)), idx).to(x.dtype)
            if out is None:
                out = torch.zeros(1, o.shape[1], x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
            for k, (r, c) in enumerate(chunk):
                out[0, :, r : r + w, c : c + w] += o[k] * weight
        return out / self.norm.to(x.device, x.dtype)


def field_codes(anchors: torch.Tensor, grid_shape: tuple[int, int], centres: torch.Tensor) -> torch.Tensor:
    """z_sem per window (N, D) interpolated smoothly from anchor codes (gy·gx, D) on a regular grid, gy, gx >= 2.

    Anchors sit evenly from the first to the last window centre (``centres`` (N, 2) px); each window's code is
    the Catmull-Rom (C¹-smooth, interpolating) blend of the 4×4 nearest anchors at its centre. The grid is
    extended by one linearly extrapolated anchor on each side, so linear fields are reproduced up to the edges.
    """
    gy, gx = grid_shape
    if gy < 2 or gx < 2:
        raise ValueError(f"a code field needs at least 2x2 anchors, got {gy}x{gx}")
    a = anchors.reshape(gy, gx, -1).double()
    a = torch.cat([2 * a[:1] - a[1:2], a, 2 * a[-1:] - a[-2:-1]], 0)
    a = torch.cat([2 * a[:, :1] - a[:, 1:2], a, 2 * a[:, -1:] - a[:, -2:-1]], 1)  # (gy+2, gx+2, D)
    lo, hi = centres.min(0).values, centres.max(0).values
    u = (centres - lo) / (hi - lo).clamp_min(1e-9) * torch.tensor([gy - 1, gx - 1], dtype=torch.float64)

    def cubic_weights(f: float) -> torch.Tensor:  # (4,) Catmull-Rom weights of taps at -1, 0, 1, 2
        f2, f3 = f * f, f * f * f
        w = [-0.5 * f3 + f2 - 0.5 * f, 1.5 * f3 - 2.5 * f2 + 1, -1.5 * f3 + 2 * f2 + 0.5 * f, 0.5 * f3 - 0.5 * f2]
        return torch.tensor(w, dtype=torch.float64)

    out = []
    for yy, xx in u.tolist():
        iy, ix = min(int(math.floor(yy)), gy - 2), min(int(math.floor(xx)), gx - 2)
        wy, wx = cubic_weights(yy - iy), cubic_weights(xx - ix)
        patch = a[iy : iy + 4, ix : ix + 4]  # padded index iy = original iy − 1
        out.append(torch.einsum("p,q,pqd->d", wy, wx, patch))
    return torch.stack(out).float()


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous partial file intact


@torch.no_grad()
def sample_mosaic(
    model_fn: MosaicModel,
    x_T: torch.Tensor,
    schedule: Schedule,
    num_steps: int,
    *,
    sampler: str = "ddim",
    state_path: str | Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
    **solver_kw,
) -> torch.Tensor:
    """``sampler`` (ddim | dpmpp_2m | dpmpp_3m | unipc) over the canvas x_T (1, C, H, W) → x_0.

    The solver state goes to ``state_path`` after every step; if that file holds a partial state with the same
    ``meta`` (shape, steps, sampler, seed, checkpoint ...), the loop resumes after its last finished step and
    gives exactly the uninterrupted result (the solvers are deterministic maps of their state).
    ``solver_kw``: clip_x0, prediction, spacing (multistep solvers).
    """
    path = Path(state_path) if state_path is not None else None
    meta = {**(meta or {}), "sampler": sampler}
    resume = None
    if path is not None and path.is_file():
        st = torch.load(path, map_location="cpu", weights_only=True)
        if st.get("meta") != meta:
            raise ValueError(
                f"{path} is a partial mosaic of other settings ({st.get('meta')}); delete it or use overwrite=true"
            )
        resume = st["state"]

    def save(state: dict) -> None:
        if path is not None:
            _save_state(path, {"state": map_state(state, torch.Tensor.cpu), "meta": meta})

    return get_sampler(sampler)(
        model_fn, x_T, schedule, num_steps, progress=progress, resume=resume, on_state=save, **solver_kw
    )


Z_SEM_MODES = ("shared", "field")


def window_codes(
    model,
    mosaic: MosaicModel,
    z_sem: str,
    generator: torch.Generator | None,
    *,
    z_tile: torch.Tensor | None = None,
    T_latent: int = 20,
    anchor_every: int = 4,
    source: str = "this checkpoint",
) -> torch.Tensor:
    """z_sem per window (N, D) on the CPU for ``z_sem``: shared (one code) | field (anchors, :func:`field_codes`).

    shared: the code of ``z_tile`` (1, 3, S, S) in [-1, 1] if given, else one drawn by the latent DDIM; field:
    latent-DDIM codes at anchors every ``anchor_every`` windows. ``source`` names the model in errors.
    """
    n = len(mosaic.origins)
    if z_sem not in Z_SEM_MODES:
        raise ValueError(f"z_sem must be shared or field, got {z_sem!r}")
    if z_sem == "shared" and z_tile is not None:
        return model.encode(z_tile).cpu().expand(n, -1)
    if not getattr(model, "has_latent", False) or not bool(getattr(model, "latent_ready", False)):
        hint = " or encode z_sem from a tile with z_sem=shared" if z_sem == "shared" else ""
        raise ValueError(
            f"{source} has no trained latent stage, which z_sem={z_sem} samples codes from: train it "
            f"with template=<res>_latent (e.g. demo_latent, scripts/pipeline.sh) and use that checkpoint{hint}"
        )
    if z_sem == "shared":
        return model.sample_latents(1, "cpu", T_latent, generator=generator).cpu().expand(n, -1)
    gy, gx = mosaic.grid
    every = max(1, int(anchor_every))
    ay, ax = max(2, math.ceil((gy - 1) / every) + 1), max(2, math.ceil((gx - 1) / every) + 1)
    anchors = model.sample_latents(ay * ax, "cpu", T_latent, generator=generator).cpu()
    return field_codes(anchors, (ay, ax), mosaic.centres())


@torch.no_grad()
def diffae_mosaic(
    model,
    height: int,
    width: int,
    T: int,
    *,
    seed: int = 0,
    z_sem: str = "shared",
    z_tile: torch.Tensor | None = None,
    T_latent: int = 20,
    anchor_every: int = 4,
    window: int | None = None,
    overlap: int | None = None,
    window_batch: int = 16,
    sampler: str = "ddim",
    spacing: str | None = None,
    state_path: str | Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
    source: str = "this checkpoint",
) -> tuple[torch.Tensor, MosaicModel]:
    """A (1, 3, height, width) mosaic in [-1, 1] from a DiffAE's EMA decoder, and its window layout.

    ``seed`` draws the codes (:func:`window_codes`) and then x_T; window = the model's tile, overlap = window/4
    by default; ``sampler``/``spacing``: the image solver (T steps); ``state_path``/``meta``: resumable, as
    :func:`sample_mosaic`.
    """
    solver = solver_options(sampler, spacing)  # a bad name fails before any work
    window = int(window or model.image_size)
    overlap = int(overlap if overlap is not None else window // 4)
    dec = model.ema_model.decoder
    codes: torch.Tensor | None = None

    def window_fn(x, t, idx):
        return dec(x, t, cond=codes[idx.cpu()].to(x.device))

    mosaic = MosaicModel(window_fn, height, width, window, overlap, int(window_batch))
    gen = torch.Generator().manual_seed(int(seed))
    codes = window_codes(model, mosaic, z_sem, gen, z_tile=z_tile, T_latent=T_latent, anchor_every=anchor_every,
                         source=source)  # fmt: skip
    x_T = torch.randn(1, 3, height, width, generator=gen)
    d = model.diffusion_conf
    x0 = sample_mosaic(
        mosaic, x_T.to(model.device), model.schedule, int(T), sampler=sampler, clip_x0=d.clip_x0,
        prediction=d.prediction, state_path=state_path, meta=meta, progress=progress, **solver,
    )  # fmt: skip
    return x0, mosaic
