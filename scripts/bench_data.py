"""Is the data loader the bottleneck? Loader tiles/s beside the training step's tiles/s, side by side in one run.

Writes a synthetic orthomosaic GeoTIFF (default 400 MP: 20000 x 20000 RGB, 256-px tiled, nodata = 0 with a
black frame, internal overviews), converts it to LMDB shards (``task=convert``), then measures, interleaved
over ``--rounds``:

    loader   TileDataModule(root=<tif | shards>).train_dataloader() tiles/s with 1, 2 ... workers (random
             windows + nodata check + D4 augmentation: the real training path), after the first batch; and
             each worker's memory (RSS and PSS from /proc/<pid>/smaps_rollup: PSS splits shared pages such as
             the page cache of a memory map fairly between processes)
    train    one optimisation step of the preset (scripts/bench.py's Lightning-equivalent step) on random
             tiles: tiles/s = batch / median step time

Usage:
    python scripts/bench_data.py                                   # 400 MP, rock64, workers 1,2
    python scripts/bench_data.py --presets rock64,rock256 --rounds 2
    python scripts/bench_data.py --pixels 4e6 --batches 5 --train-iters 1 --out /tmp/b.json   # quick check

Output: a table on stdout and JSON (``--out``, default ``bench_results/data_<timestamp>.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]


def make_geotiff(path: Path, pixels: float, seed: int = 0) -> Path:
    """A ``side x side`` RGB uint8 GeoTIFF of smooth noise with a black (nodata) frame, written by strips."""
    import rasterio
    from rasterio.transform import from_origin

    side = int(math.sqrt(pixels))
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 226, (3, 64, 64)).astype(np.float32)
    texture = np.kron(base, np.ones((16, 16), np.float32))[:, :1024, :1024]  # 1024^2 blocky "grains"
    texture = (texture + rng.normal(0, 12, texture.shape)).clip(1, 255).astype(np.uint8)
    frame = side // 40  # 2.5 % black border on each side, as an exported mosaic
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8", "nodata": 0}
    profile.update({"crs": "EPSG:32633", "transform": from_origin(500000, 6000000, 0.02, 0.02), "tiled": True})
    profile.update({"blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER"})
    with rasterio.open(path, "w", **profile) as ds:
        for top in range(0, side, 1024):
            h = min(1024, side - top)
            cols = np.arange(side) % 1024
            strip = texture[:, :h][:, :, cols]
            strip = np.roll(strip, top // 7, axis=2)  # every strip different
            strip[:, :, :frame] = 0
            strip[:, :, side - frame :] = 0
            if top < frame:
                strip[:, : frame - top] = 0
            if top + h > side - frame:
                strip[:, max(0, side - frame - top) :] = 0
            ds.write(strip, window=rasterio.windows.Window(0, top, side, h))
        ds.build_overviews([4, 16, 64], rasterio.enums.Resampling.nearest)
    return path


def convert_to_shards(tif: Path, out: Path, image_size: int, work: Path) -> dict:
    from omegaconf import OmegaConf

    from rockgen.tasks.convert import convert

    if (out / "rockgen-shards.json").is_file():
        return json.loads((out / "rockgen-shards.json").read_text())
    data = {"_target_": "rockgen.data.TileDataModule", "root": str(tif), "image_size": image_size, "fit": "crop"}
    data.update({"num_workers": 2, "cache_dir": str(work / "cache")})
    cfg = OmegaConf.create({"data": data, "paths": {"run_dir": str(work / f"convert{image_size}")}, "out": str(out)})
    cfg.shard_tiles = 50_000
    return convert(cfg)


def worker_memory(pid: int) -> tuple[float, float]:
    """``(rss_mb, pss_mb)`` of process ``pid`` (0, 0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0, 0.0
    fields = {line.split(":")[0]: line.split()[1] for line in text.splitlines()[1:]}
    return int(fields.get("Rss", 0)) / 1024, int(fields.get("Pss", 0)) / 1024


def children() -> list[int]:
    me = os.getpid()
    out = []
    for task in Path(f"/proc/{me}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def measure_loader(root: Path, image_size: int, batch: int, workers: int, batches: int, cache: Path) -> dict:
    from rockgen.data import TileDataModule

    dm = TileDataModule(
        root=str(root), image_size=image_size, batch_size=batch, num_workers=workers,
        persistent_workers=False, val_fraction=0.05, cache_dir=str(cache),
    )  # fmt: skip
    t0 = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    loader = dm.train_dataloader()
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first_s = time.perf_counter() - t0
    rss, pss = [], []
    t0 = time.perf_counter()
    for i in range(batches):
        next(it)
        if i % max(1, batches // 4) == 0:
            mem = [worker_memory(p) for p in children()]
            rss.append(max((m[0] for m in mem), default=0.0))
            pss.append(max((m[1] for m in mem), default=0.0))
    elapsed = time.perf_counter() - t0
    del it, loader
    return {
        "tiles_s": batches * batch / elapsed, "first_batch_s": first_s, "setup_s": setup_s,
        "worker_rss_mb": max(rss, default=0.0), "worker_pss_mb": max(pss, default=0.0), "items": len(dm.train_set),
    }  # fmt: skip


def loader_in_subprocess(root: Path, image_size: int, batch: int, workers: int, batches: int, cache: Path) -> dict:
    """:func:`measure_loader` in a fresh interpreter: workers fork from a parent without the model, so their
    memory is the loader's own, as in a real run's DataLoader workers (forked before the model is big)."""
    spec = json.dumps([str(root), image_size, batch, workers, batches, str(cache)])
    cmd = [sys.executable, __file__, "--loader-spec", spec]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=3600, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    if done.returncode:
        raise RuntimeError(f"loader measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_train_step(preset: str, batch: int):
    from bench import build_model, lightning_train_step

    model = build_model(preset, channels_last=False)
    size = int(model.hparams.get("image_size", 0) or 0) or int(preset.removeprefix("rock"))
    x = torch.rand(batch, 3, size, size) * 2 - 1
    data = {"img": x, "index": torch.arange(batch), "source": torch.zeros(batch, dtype=torch.long)}
    step, _ = lightning_train_step(model, data, contextlib.nullcontext)  # fp32, the CPU default
    return step, size


def measure_train(step, batch: int, iters: int) -> dict:
    step()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"tiles_s": batch / statistics.median(times), "step_s": statistics.median(times)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pixels", type=float, default=400e6, help="synthetic GeoTIFF size in pixels")
    p.add_argument("--presets", default="rock64", help="comma list: rock64,rock256")
    p.add_argument("--workers", default="1,2", help="loader worker counts")
    p.add_argument("--batch", type=int, default=64, help="loader batch")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=40, help="timed loader batches per measurement")
    p.add_argument("--train-iters", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions (medians reported)")
    p.add_argument("--work-dir", default=None, help="where the GeoTIFF and shards go (kept; reused if present)")
    p.add_argument("--out", default=None)
    p.add_argument("--loader-spec", default=None, help=argparse.SUPPRESS)  # internal: one loader measurement
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.loader_spec:
        root, size, batch, workers, batches, cache = json.loads(args.loader_spec)
        print(json.dumps(measure_loader(Path(root), size, batch, workers, batches, Path(cache))))
        return {}
    torch.set_num_threads(2)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_data_"))
    work.mkdir(parents=True, exist_ok=True)
    tif = work / f"ortho_{int(args.pixels / 1e6)}mp.tif"
    if not tif.is_file():
        t0 = time.perf_counter()
        make_geotiff(tif, args.pixels)
        print(f"wrote {tif} ({tif.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)
    workers = [int(w) for w in args.workers.split(",")]
    rows, results = [], {}
    for preset in args.presets.split(","):
        step, size = make_train_step(preset, args.train_batch)
        shards = work / f"shards{size}"
        conv = convert_to_shards(tif, shards, size, work)
        samples: dict[str, list[dict]] = {}
        for r in range(args.rounds):
            for source, root in (("geotiff", tif), ("shards", shards)):
                for w in workers:
                    m = loader_in_subprocess(root, size, args.batch, w, args.batches, work / "cache")
                    samples.setdefault(f"{source}/{w}", []).append(m)
                    print(f"[{preset} round {r}] {source} workers={w}: {m['tiles_s']:.0f} tiles/s", flush=True)
            samples.setdefault("train", []).append(measure_train(step, args.train_batch, args.train_iters))
            print(f"[{preset} round {r}] train step: {samples['train'][-1]['tiles_s']:.2f} tiles/s", flush=True)
        train_tps = statistics.median(s["tiles_s"] for s in samples["train"])
        for key, ms in samples.items():
            if key == "train":
                continue
            source, w = key.split("/")
            tps = statistics.median(m["tiles_s"] for m in ms)
            rows.append({
                "preset": preset, "source": source, "workers": int(w), "loader_tiles_s": round(tps, 1),
                "train_tiles_s": round(train_tps, 2), "loader_over_train": round(tps / train_tps, 1),
                "first_batch_s": round(statistics.median(m["first_batch_s"] for m in ms), 2),
                "setup_s": round(statistics.median(m["setup_s"] for m in ms), 2),
                "worker_rss_mb": round(max(m["worker_rss_mb"] for m in ms)),
                "worker_pss_mb": round(max(m["worker_pss_mb"] for m in ms)), "train_items": ms[0]["items"],
            })  # fmt: skip
        results[preset] = {"samples": samples, "convert": conv, "train_batch": args.train_batch}
    print(format_table(rows))
    out = Path(args.out or ROOT / "bench_results" / f"data_{time.strftime('%Y%m%d_%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"rows": rows, "raw": results, "args": vars(args), "tif": str(tif), "tif_bytes": tif.stat().st_size}
    report["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"JSON: {out}")
    return report


def format_table(rows: list[dict]) -> str:
    head = ("preset", "source", "workers", "loader tiles/s", "train tiles/s", "ratio", "first batch s", "worker PSS MB")
    keys = ("preset", "source", "workers", "loader_tiles_s", "train_tiles_s", "loader_over_train", "first_batch_s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[k]) for k in keys] + [f"{r['worker_pss_mb']} (RSS {r['worker_rss_mb']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
