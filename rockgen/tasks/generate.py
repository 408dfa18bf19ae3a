"""``task=generate``: N new tiles from any rockgen checkpoint with a ``sample`` method, as numbered PNGs + grid.

Batch b holds indices [b·B, (b+1)·B) and is drawn with seed ``seed + b``; rank r of W takes batches
b ≡ r (mod W). So every index is written exactly once (no duplicates, no gaps) and the images do not depend
on the number of devices. ``target_size`` upscales each tile with Lanczos (the hi-res output path). SIGTERM or
SIGUSR1 stops between two sampler steps (single process) or batches: the PNGs written are complete,
``samples.json`` records ``complete: false`` and how many, and the exit status is 143. ``output=geotiff|xyz``
also lays the batch out as a near-square sheet (``sheet.png``, row by row) written as a COG / XYZ pyramid with
its viewer at XYZ tile ``x``, ``y`` of ``zoom`` (``rockgen.tasks.gis_output``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader

from rockgen.callbacks.preemption import Preempted, SignalFlag, check_preempted
from rockgen.lit.checkpoint import CheckpointError, load_checkpoint_module
from rockgen.precision import resolve_precision
from rockgen.samplers import solver_options
from rockgen.tasks.build import build_callbacks, build_strategy
from rockgen.tasks.gis_output import GisOutputs
from rockgen.visual import to_uint8, upscale_factor

PREEMPTED_EXIT = 143  # 128 + SIGTERM: a pre-empted generation (samples.json says how many PNGs are complete)


class _Batches(pl.LightningDataModule):
    """One item per batch of this rank: (batch number, first index, size)."""

    def __init__(self, num_samples: int, batch_size: int) -> None:
        super().__init__()
        self.num_samples, self.batch_size = num_samples, batch_size

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        n_batches = math.ceil(self.num_samples / self.batch_size)
        items = [
            (b, b * self.batch_size, min(self.batch_size, self.num_samples - b * self.batch_size))
            for b in range(rank, n_batches, world)
        ]
        return DataLoader(items, batch_size=None, shuffle=False)


class _Writer(pl.LightningModule):
    """Draws each batch with the wrapped model and writes its PNGs; rank 0 writes the grid at the end."""

    def __init__(self, model: pl.LightningModule, out_dir: Path, opts: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.out_dir, self.opts = model, out_dir, opts

    def predict_step(self, item, batch_idx: int) -> int:
        b, start, n = (int(v) for v in item)
        check_preempted()  # between batches: every PNG already written is complete
        o = self.opts
        kw = dict(o["sample_kwargs"])
        if "sampler" in self.model.sample_options:  # diffusion models (not the VAE)
            kw.setdefault("sampler", o["sampler"])
            if o["spacing"] is not None:
                kw.setdefault("spacing", o["spacing"])
        if o["seamless"]:
            kw["seamless"] = True
        images = self.model.sample(n, self.device, T=o["T"], T_latent=o["T_latent"], seed=o["seed"] + b, **kw)
        for i, arr in enumerate(to_uint8(images)):
            img = Image.fromarray(arr)
            if o["target_size"]:
                img = img.resize((o["target_size"], o["target_size"]), Image.Resampling.LANCZOS)
            img.save(self.out_dir / f"{start + i:06d}.png")
        return n

    def on_predict_end(self) -> None:
        self.trainer.strategy.barrier("generate.written")
        if self.trainer.is_global_zero:
            write_grid(self.out_dir, self.out_dir.parent / "grid.png", self.opts["grid_size"])


def write_grid(sample_dir: Path, path: Path, count: int, max_cell: int = 256, min_cell: int = 96) -> Path:
    """A square-ish grid PNG of the first ``count`` numbered samples: tiles under ``min_cell`` px enlarged by the
    smallest integer factor (nearest, every pixel a sharp block: 32-px tiles become 96 px), tiles over ``max_cell``
    reduced with Lanczos."""
    files = sorted(sample_dir.glob("*.png"))[:count]
    cells = [Image.open(f).convert("RGB") for f in files]
    side = cells[0].width
    if side < min_cell:
        size, resample = side * upscale_factor(side, min_cell), Image.Resampling.NEAREST
    else:
        size, resample = min(max_cell, side), Image.Resampling.LANCZOS
    cells = [c.resize((size, size), resample) if c.width != size else c for c in cells]
    ncol = math.ceil(math.sqrt(len(cells)))
    nrow = math.ceil(len(cells) / ncol)
    grid = np.full((nrow * (size + 2) + 2, ncol * (size + 2) + 2, 3), 255, np.uint8)
    for k, c in enumerate(cells):
        r, q = divmod(k, ncol)
        grid[2 + r * (size + 2) : 2 + r * (size + 2) + size, 2 + q * (size + 2) : 2 + q * (size + 2) + size] = c
    Image.fromarray(grid).save(path)
    return path


def sheet_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the near-square sheet that lays out n tiles row by row."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def write_sheet(samples_dir: Path, n: int, path: Path) -> np.ndarray:
    """The n PNGs of ``samples_dir`` laid out row by row without gaps (empty cells black) → ``path``; (H, W, 3)."""
    rows, cols = sheet_shape(n)
    tiles = [np.asarray(Image.open(samples_dir / f"{i:06d}.png").convert("RGB")) for i in range(n)]
    side = tiles[0].shape[0]
    sheet = np.zeros((rows * side, cols * side, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * side : (r + 1) * side, c * side : (c + 1) * side] = tile
    Image.fromarray(sheet).save(path)
    return sheet


def check_steps(value: Any, key: str) -> None:
    """A sampler step count: null (the checkpoint's default) or an integer >= 1; the error names the setting."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r}: the number of sampling steps must be an integer >= 1 (or null: default)")


def generate(cfg: DictConfig) -> dict[str, Any]:
    """Write ``num_samples`` PNGs to ``<run_dir>/samples`` and ``grid.png`` beside them."""
    if not cfg.ckpt_path:
        raise ValueError("task=generate needs ckpt_path=<checkpoint> (a latent-stage DiffAE, pixel or VAE model)")
    if int(cfg.num_samples) < 1 or int(cfg.batch_size) < 1:
        raise ValueError(f"num_samples ({cfg.num_samples}) and batch_size ({cfg.batch_size}) must be >= 1")
    for key in ("T", "T_latent"):
        check_steps(cfg.get(key), key)
    sampler, spacing = str(cfg.get("sampler") or "ddim"), cfg.get("spacing")
    solver_options(sampler, spacing)  # a bad name fails before the checkpoint is loaded
    try:
        model = load_checkpoint_module(cfg.ckpt_path)  # trusted_checkpoint: the process-wide setting
    except CheckpointError as err:
        raise CheckpointError(f"ckpt_path: {err}") from None
    reason = model.sample_unavailable() if hasattr(model, "sample_unavailable") else "it has no generation protocol"
    if reason:
        raise ValueError(f"ckpt_path={cfg.ckpt_path} ({type(model).__name__}) cannot generate: {reason}")
    sample_kwargs = dict(cfg.get("sample_kwargs") or {})
    cls, guidance = cfg.get("class"), cfg.get("guidance")
    if cls is not None or guidance is not None:
        if not hasattr(model, "check_condition"):
            raise ValueError(f"class=/guidance=: {cfg.ckpt_path} holds a {type(model).__name__}, which has no classes")
        model.check_condition(cls, None if guidance is None else float(guidance))  # before any work
        sample_kwargs.update(cls=cls, guidance=None if guidance is None else float(guidance))
    if cfg.get("seamless") and "seamless" not in model.sample_options:
        raise ValueError(f"seamless=true needs a DiffAE checkpoint; {cfg.ckpt_path} holds a {type(model).__name__}")
    run_dir = Path(cfg.paths.run_dir)
    side = int(cfg.target_size or model.image_size)
    rows, cols = sheet_shape(int(cfg.num_samples))
    # zoom / tile / existing files checked before work; sheet.png is written only beside GIS files
    gis = GisOutputs.plan(cfg, run_dir, "sheet", rows * side, cols * side, png_alone=False)
    out_dir = run_dir / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = dict(
        T=cfg.T,
        T_latent=cfg.T_latent,
        sampler=sampler,
        spacing=spacing,
        seamless=bool(cfg.get("seamless", False)),
        seed=int(cfg.seed),
        target_size=cfg.target_size,
        grid_size=int(cfg.grid_size),
        sample_kwargs=sample_kwargs,
    )
    writer = _Writer(model, out_dir, opts)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        precision=resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"), training=False),
        logger=False,
        callbacks=build_callbacks(cfg.get("callbacks"), only=("progress",)),
        strategy=build_strategy(cfg.get("strategy")),
        default_root_dir=str(run_dir),
        max_steps=-1,
        use_distributed_sampler=False,
    )
    batches = _Batches(int(cfg.num_samples), int(cfg.batch_size))
    try:
        with SignalFlag():
            trainer.predict(writer, datamodule=batches, return_predictions=False)
    except Preempted:
        written = len(list(out_dir.glob("*.png")))
        (run_dir / "samples.json").write_text(
            json.dumps({"num_samples": int(cfg.num_samples), "written": written, "complete": False}, indent=2) + "\n"
        )
        print(f"Stopped by a signal: {written} of {cfg.num_samples} samples complete in {out_dir}", flush=True)
        raise SystemExit(PREEMPTED_EXIT) from None
    manifest = {
        "complete": True,
        "num_samples": int(cfg.num_samples),
        "checkpoint": str(cfg.ckpt_path),
        **{k: v for k, v in opts.items() if k != "sample_kwargs"},
        "sample_kwargs": opts["sample_kwargs"],
    }
    if trainer.is_global_zero:
        if gis.kinds - {"png"}:
            sheet = write_sheet(out_dir, int(cfg.num_samples), gis.paths()["png"])
            manifest["sheet"] = {"file": str(gis.paths()["png"]), "rows": rows, "cols": cols, **gis.write_gis(sheet)}
        (run_dir / "samples.json").write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"Wrote {cfg.num_samples} samples to {out_dir} and a grid to {run_dir / 'grid.png'}", flush=True)
    return {"run_dir": run_dir, "samples_dir": out_dir, "grid": run_dir / "grid.png"}
