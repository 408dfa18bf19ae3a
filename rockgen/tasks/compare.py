"""``task=compare``: measure DiffAE, pixel DDPM/DDIM and the VAE on this machine → comparison.md + .json.

    rockgen task=compare compare.diffae_ckpt=A.ckpt compare.pixel_ckpt=B.ckpt compare.vae_ckpt=C.ckpt
    rockgen task=compare compare.resolutions=[64,128]        # speed, memory of fresh rock{64,128}_*
    scripts/compare.sh                                             # trains the three demo models, then this

Speed rows (samples/s at ``compare.batch_size``, after one warm-up call):
    VAE decode          z ~ the fitted Gaussian of the training latents (the N(0, I) prior if none), one pass
    DiffAE T=20         latent DDIM (T_latent) → z_sem → DDIM-T render; render alone with a random z_sem when
                        the model has no latent DDIM (fresh models, autoencoder-only checkpoints: noted)
    Pixel DDIM-25, -50  measured
    Pixel DDPM-1000     estimated: 1000 × the per-step time of ``ddpm_probe_steps`` real DDPM steps
Memory: each model runs in a fresh subprocess (``isolate``); peak memory = the peak resident set during
sampling (Linux VmHWM, reset after building) minus the resident set before the model was built (interpreter
and libraries) minus the training copy of the weights (every module also holds an EMA copy, which is what
samples); on CUDA, ``max_memory_allocated``.
Reconstruction (checkpoints only) on the held-out tiles of ``data.*``: every ``reconstruction_codes`` entry of
the model (VAE decode(μ); DiffAE render(DDIM-inverted x_T, z_sem) and render(random x_T, z_sem); the pixel model
has no encoder, so no row). FID and KID (checkpoints only, when torch-fidelity and the Inception weights are on
disk, else a row saying why): ``fid_samples`` images of the model's first measured generation mode vs the held-out
tiles; KID (unbiased, with its std over subsets) is the one to read at a few hundred samples.
The models are driven through ``rockgen.methods.protocol`` (``generation_modes``/``reconstruction_codes``): no
branch on the kind of model here.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rockgen.tasks import write_json
from rockgen.tasks.common import pick_device, tiles_of

CHECKPOINT_KEYS = ("diffae", "pixel", "vae")  # compare.<key>_ckpt: the model's ``method_key``


def method_classes() -> list[type]:
    """The methods compare builds fresh (``rock<res>_<preset_method>``): each implements the generation protocol."""
    from rockgen.methods.diffae_stages import DiffAEAutoencoder
    from rockgen.methods.pixel import PixelDDPM
    from rockgen.methods.vae import VAE

    return [DiffAEAutoencoder, PixelDDPM, VAE]


# -------------------------------------------------------------------------------------------- main process
def compare(cfg: DictConfig) -> dict[str, Any]:
    """Measure every checkpoint given and every fresh preset model; write comparison.md, .json and .csv."""
    conf = OmegaConf.to_container(cfg.compare, resolve=True)
    run_dir = Path(cfg.paths.run_dir)
    recon = {"data": OmegaConf.to_container(cfg.data, resolve=True), "max_items": conf["recon_items"]}
    jobs = [{**conf, "ckpt": str(conf[f"{k}_ckpt"]), "recon": recon} for k in CHECKPOINT_KEYS if conf[f"{k}_ckpt"]]
    suffixes = [cls.preset_method for cls in method_classes()]
    presets = conf["presets"] or [f"rock{r}_{suffix}" for r in conf["resolutions"] for suffix in suffixes]
    for name in presets:
        check_preset(name)
    jobs += [{**conf, "preset": name, "recon": None} for name in presets]
    if not jobs:
        raise ValueError("nothing to compare: give compare.{diffae,pixel,vae}_ckpt and/or compare.resolutions")
    if conf["fid_samples"] and any(j["recon"] for j in jobs):
        from rockgen.metrics import fid_unavailable_reason

        reason = fid_unavailable_reason()
        print(f"[compare] FID/KID of {conf['fid_samples']} samples vs held-out tiles", flush=True)
        if reason:
            print(f"[compare] FID/KID skipped: {reason}", flush=True)
    env, results = environment(conf), []
    for job in jobs:
        print(f"[compare] {job.get('ckpt') or job['preset']}", flush=True)
        results.append(run_isolated(job) if conf["isolate"] else measure(job))
    report = {"environment": env, "models": results}
    write_json(run_dir / "comparison.json", report)
    (run_dir / "comparison.md").write_text(markdown(report))
    write_csv(report, run_dir / "comparison.csv")
    print((run_dir / "comparison.md").read_text(), flush=True)
    return report


def check_preset(name: str) -> None:
    """A template compare can build: known, and its model is a method's LightningModule (the protocol)."""
    from hydra.utils import get_class

    from rockgen.lit.module import MethodModule
    from rockgen.presets import presets

    table = presets()
    if name not in table:
        raise ValueError(f"compare.presets: unknown template {name!r}; choose from {sorted(table)}")
    target = table[name]["model"]["_target_"]
    if not issubclass(get_class(target), MethodModule):
        raise ValueError(f"compare.presets: {name} builds {target}, which compare cannot measure")


def run_isolated(job: dict[str, Any]) -> dict[str, Any]:
    """``measure(job)`` in a fresh interpreter, so that its peak memory is its own."""
    import rockgen

    root = str(Path(rockgen.__file__).resolve().parent.parent)  # where ``rockgen`` imports from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "job.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps(job))
        proc = subprocess.run(
            [sys.executable, "-m", "rockgen.tasks.compare", str(spec), str(out)],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"compare worker failed for {job.get('ckpt') or job['preset']}:\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def environment(conf: dict[str, Any]) -> dict[str, Any]:
    device = pick_device(conf["device"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "threads": conf["threads"] or torch.get_num_threads(),
        "torch": torch.__version__,
        "batch_size": conf["batch_size"],
        "repeats": conf["repeats"],
        "isolated": conf["isolate"],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        # other work on a shared machine slows every row: compare ratios within one run, not across runs
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


# ------------------------------------------------------------------------------------------------ worker
def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Build or load one model, time its sampling methods, record peak memory, score reconstructions."""
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = pick_device(job["device"])
    base = _rss_mb() if device.type == "cpu" else 0.0
    model = _load(job, device)
    copies = 2 if getattr(model, "ema_model", None) is not None else 1  # training weights + EMA
    params = sum(p.numel() for p in model.parameters()) // copies
    training_copy_mb = (copies - 1) * sum(p.numel() * p.element_size() for p in model.parameters()) / copies / 2**20
    options = job["options"].get(model.method_key) or {}
    modes = model.generation_modes(**options)
    _reset_peak(device)
    rows = [_time_row(job, device, mode) for mode in modes]
    memory = _peak_mb(device) - base - training_copy_mb
    recon, distribution = [], None
    if job.get("recon"):
        tiles = _heldout_tiles(job, model.image_size)
        recon = _reconstruction(model.reconstruction_codes(**options), tiles, job, device)
        distribution = _distribution(next(m for m in modes if m.cost_scale == 1), tiles, job, device)
    return {
        "kind": model.method_key,
        "method": model.method_label,
        "source": job.get("ckpt") or f"fresh {job['preset']}",
        "image_size": model.image_size,
        "params_m": params / 1e6,
        "peak_memory_mb": memory,
        "rows": rows,
        "reconstruction": recon,
        "distribution": distribution,
    }


def _load(job: dict[str, Any], device: torch.device):
    if job.get("ckpt"):
        from rockgen.lit.checkpoint import load_checkpoint_module

        return load_checkpoint_module(job["ckpt"], map_location=device)
    import hydra

    from rockgen.presets import presets

    model = hydra.utils.instantiate(presets()[job["preset"]]["model"], _convert_="all")
    return model.to(device).eval()


def _time_row(job: dict[str, Any], device: torch.device, mode) -> dict[str, Any]:
    """Warm up once, then time ``repeats`` calls of the mode at ``batch_size`` and keep the median (a shared
    machine has bursts of other work); a probed mode (DDPM) is extrapolated by its ``cost_scale``."""
    b, times = job["batch_size"], []
    mode.run(b, job["seed"], True)
    for _ in range(job["repeats"]):
        _sync(device)
        start = time.perf_counter()
        mode.run(b, job["seed"], False)
        _sync(device)
        times.append(time.perf_counter() - start)
    per_sample = statistics.median(times) / b * mode.cost_scale
    return {
        "method": mode.name,
        "measured": mode.cost_scale == 1,
        "note": mode.note,
        "s_per_sample": per_sample,
        "samples_per_s": 1.0 / per_sample,
        "call_seconds": times,
    }


def _heldout_tiles(job: dict[str, Any], image_size: int):
    """The held-out tiles of ``data.*`` at the model's size, at most ``recon.max_items``."""
    from torch.utils.data import Subset

    spec = job["recon"]
    tiles = tiles_of({**spec["data"], "num_workers": 0}, image_size, "val")[1]
    if spec["max_items"] and len(tiles) > spec["max_items"]:
        tiles = Subset(tiles, range(spec["max_items"]))
    return tiles


@torch.no_grad()
def _reconstruction(codes, tiles, job: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """PSNR/SSIM(/LPIPS) of every reconstruction code of the model on the held-out tiles."""
    if not codes:
        return []
    from torch.utils.data import DataLoader

    from rockgen.metrics import ReconstructionMetrics

    metrics = {code.name: ReconstructionMetrics().to(device) for code in codes}
    gen = torch.Generator(device=device).manual_seed(job["seed"])
    for batch in DataLoader(tiles, batch_size=job["batch_size"]):
        x = batch["img"].to(device)
        for code in codes:
            metrics[code.name].update(code.run(x, gen), (x + 1) / 2)
    return [{"code": name, "tiles": len(tiles), **m.compute()} for name, m in metrics.items()]


@torch.no_grad()
def _distribution(mode, tiles, job: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """FID and KID (± std) of ``fid_samples`` images of ``mode`` vs the held-out tiles (Inception, offline)."""
    from torch.utils.data import DataLoader

    from rockgen.metrics import DistributionScores, fid_unavailable_reason

    n = job["fid_samples"]
    if not n:
        return {"skipped": "compare.fid_samples=0"}
    reason = fid_unavailable_reason()
    if reason:
        return {"skipped": reason}
    scores = DistributionScores(subset_size=job["kid_subset_size"])
    for batch in DataLoader(tiles, batch_size=job["batch_size"]):
        scores.update(batch["img"].to(device).add(1).div(2), real=True)
    for i, start in enumerate(range(0, n, job["batch_size"])):
        scores.update(mode.run(min(job["batch_size"], n - start), job["seed"] + 1 + i, False), real=False)
    return {"mode": mode.name, **scores.compute(seed=job["seed"])}


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field: str) -> float | None:
    """A memory field of /proc/self/status in kB (Linux); None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    return (_status_kb("VmRSS") or 0.0) / 1024


def _reset_peak(device: torch.device) -> None:
    """Start a new peak: CUDA's counter, or on Linux the VmHWM high-water mark (clear_refs 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then VmHWM includes building the model: an upper bound


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (_status_kb("VmHWM") or 0.0) / 1024


# ------------------------------------------------------------------------------------------------ report
def markdown(report: dict[str, Any]) -> str:
    """comparison.md: a speed/memory table and a reconstruction table."""
    env = report["environment"]
    load = "" if env["load_average_1m"] is None else f"; load average {env['load_average_1m']:.1f} at the start"
    lines = [
        f"Measured {env['date']} on {env['device']} ({env['device_name']}, {env['threads']} threads, torch "
        f"{env['torch']}{load}), batch {env['batch_size']}, "
        f"median of {env['repeats']} timed call(s) after a warm-up.",
        "",
        "| Model | Source | Res | Params (M) | Method | Samples/s | s/sample | Peak mem (MB) | Notes |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for m in report["models"]:
        for r in m["rows"]:
            lines.append(
                f"| {m['method']} | {_short(m['source'])} | {m['image_size']} | {m['params_m']:.2f} "
                f"| {r['method']} | {r['samples_per_s']:.3g} | {r['s_per_sample']:.3g} "
                f"| {m['peak_memory_mb']:.0f} | {r['note']} |"
            )
    recon = [(m, r) for m in report["models"] for r in m["reconstruction"]]
    if recon:
        lines += [
            "",
            "| Model | Source | Res | Code | Held-out tiles | PSNR (dB) | SSIM | LPIPS |",
            "|---|---|---:|---|---:|---:|---:|---:|",
        ]
        for m, r in recon:
            lpips = f"{r['lpips']:.3f}" if "lpips" in r else "n/a (no AlexNet weights)"
            lines.append(
                f"| {m['method']} | {_short(m['source'])} | {m['image_size']} | {r['code']} "
                f"| {r['tiles']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {lpips} |"
            )
    dist = [(m, m["distribution"]) for m in report["models"] if m.get("distribution")]
    if dist:
        lines += ["", "| Model | Source | Res | Samples of | FID | KID (×10³) ± std | real / generated |"]
        lines += ["|---|---|---:|---|---:|---:|---:|"]
        for m, d in dist:
            if "skipped" in d:
                lines.append(
                    f"| {m['method']} | {_short(m['source'])} | {m['image_size']} | n/a ({d['skipped']}) |||| "
                )
                continue
            lines.append(
                f"| {m['method']} | {_short(m['source'])} | {m['image_size']} | {d['mode']} | {d['fid']:.2f} "
                f"| {1e3 * d['kid']:.2f} ± {1e3 * d['kid_std']:.2f} | {d['n_real']} / {d['n_fake']} |"
            )
    return "\n".join(lines) + "\n"


def write_csv(report: dict[str, Any], path: Path) -> None:
    """comparison.csv: one row per (model, metric) — speed rows, reconstruction rows, FID/KID."""
    import csv

    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["method", "source", "image_size", "row", "metric", "value"])
        for m in report["models"]:
            head = [m["method"], m["source"], m["image_size"]]
            for r in m["rows"]:
                out.writerow([*head, r["method"], "samples_per_s", r["samples_per_s"]])
            out.writerow([*head, "", "peak_memory_mb", m["peak_memory_mb"]])
            for r in m["reconstruction"]:
                for key in ("psnr", "ssim", "lpips"):
                    if key in r:
                        out.writerow([*head, r["code"], key, r[key]])
            d = m.get("distribution") or {}
            for key in ("fid", "kid", "kid_std"):
                if key in d:
                    out.writerow([*head, d["mode"], key, d[key]])


def _short(source: str) -> str:
    """A checkpoint as ``<run>/<file>`` (``<run>/checkpoints/<file>`` → ``<run>/<file>``); presets unchanged."""
    if source.startswith("fresh "):
        return source
    path = Path(source)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return f"{run.name}/{path.name}"


if __name__ == "__main__":  # the isolated worker: python -m rockgen.tasks.compare job.json result.json
    Path(sys.argv[2]).write_text(json.dumps(measure(json.loads(Path(sys.argv[1]).read_text()))))
