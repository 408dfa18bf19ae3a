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
Reconstruction (checkpoints only) on the held-out tiles of ``data.*``: VAE decode(μ); DiffAE
render(DDIM-inverted x_T, z_sem) and render(random x_T, z_sem); the pixel model has no encoder, so no row.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rockgen.tasks import write_json
from rockgen.tasks.common import pick_device, tiles_of

KINDS = {"diffae": "DiffAE", "pixel": "Pixel DDPM", "vae": "VAE"}
TARGET_KIND = {
    "rockgen.lit.diffae.LitModel": "diffae",
    "rockgen.lit.pixel.PixelDiffusion": "pixel",
    "rockgen.lit.vae.LitVAE": "vae",
}
PRESET_SUFFIX = {"diffae": "autoenc", "pixel": "pixel", "vae": "vae"}


# -------------------------------------------------------------------------------------------- main process
def compare(cfg: DictConfig) -> dict[str, Any]:
    """Measure every checkpoint given and every fresh preset model; write comparison.md and .json."""
    conf = OmegaConf.to_container(cfg.compare, resolve=True)
    run_dir = Path(cfg.paths.run_dir)
    recon = {"data": OmegaConf.to_container(cfg.data, resolve=True), "max_items": conf["recon_items"]}
    jobs = [{**conf, "kind": k, "ckpt": str(conf[f"{k}_ckpt"]), "recon": recon} for k in KINDS if conf[f"{k}_ckpt"]]
    presets = conf["presets"] or [f"rock{r}_{PRESET_SUFFIX[k]}" for r in conf["resolutions"] for k in KINDS]
    jobs += [{**conf, "kind": preset_kind(name), "preset": name, "recon": None} for name in presets]
    if not jobs:
        raise ValueError("nothing to compare: give compare.{diffae,pixel,vae}_ckpt and/or compare.resolutions")
    env, results = environment(conf), []
    for job in jobs:
        print(f"[compare] {KINDS[job['kind']]} {job.get('ckpt') or job['preset']}", flush=True)
        results.append(run_isolated(job) if conf["isolate"] else measure(job))
    report = {"environment": env, "models": results}
    write_json(run_dir / "comparison.json", report)
    (run_dir / "comparison.md").write_text(markdown(report))
    print((run_dir / "comparison.md").read_text(), flush=True)
    return report


def preset_kind(name: str) -> str:
    """diffae / pixel / vae of a template by its model's class."""
    from rockgen.presets import presets

    table = presets()
    if name not in table:
        raise ValueError(f"compare.presets: unknown template {name!r}; choose from {sorted(table)}")
    target = table[name]["model"]["_target_"]
    if target not in TARGET_KIND:
        raise ValueError(f"compare.presets: {name} builds {target}, which compare cannot measure")
    return TARGET_KIND[target]


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
    _reset_peak(device)
    rows = [_time_row(job, device, name, fn) for name, fn in _methods(model, job, device)]
    memory = _peak_mb(device) - base - training_copy_mb
    recon = _reconstruction(model, job, device) if job.get("recon") else []
    return {
        "kind": job["kind"],
        "source": job.get("ckpt") or f"fresh {job['preset']}",
        "image_size": model.image_size,
        "params_m": params / 1e6,
        "peak_memory_mb": memory,
        "rows": rows,
        "reconstruction": recon,
    }


def _load(job: dict[str, Any], device: torch.device):
    if job.get("ckpt"):
        from rockgen.lit.checkpoint import load_checkpoint_module

        return load_checkpoint_module(job["ckpt"], map_location=device)
    import hydra

    from rockgen.presets import presets

    model = hydra.utils.instantiate(presets()[job["preset"]]["model"], _convert_="all")
    return model.to(device).eval()


def _methods(model, job: dict[str, Any], device: torch.device) -> list[tuple[str, Callable[[int, bool], str]]]:
    """(row name, fn(batch, warm_up) → note) of each sampling method of the model; warm-up runs 2 steps."""
    seed = job["seed"]
    if job["kind"] == "vae":
        method = "gaussian" if model.latent_gaussian_fitted else "prior"

        def vae(n: int, warm: bool) -> str:
            model.sample(n, device, method=method, seed=seed)
            return "z ~ fitted Gaussian" if method == "gaussian" else "z ~ N(0, I) prior (no fitted Gaussian)"

        return [("decode", vae)]
    if job["kind"] == "pixel":

        def pixel(T: int, method: str) -> Callable[[int, bool], str]:
            def run(n: int, warm: bool) -> str:
                model.sample(n, device, T=2 if warm else T, method=method, seed=seed)
                return ""

            return run

        probe = job["ddpm_probe_steps"]
        return [(f"DDIM-{T}", pixel(T, "ddim")) for T in job["pixel_T"]] + [
            (f"DDPM-{job['ddpm_steps']}", pixel(probe, "ddpm"))
        ]
    T, T_latent = job["diffae_T"], job["diffae_T_latent"]
    if getattr(model, "has_latent", False) and bool(model.latent_ready):

        def diffae(n: int, warm: bool) -> str:
            model.sample(n, device, T=2 if warm else T, T_latent=2 if warm else T_latent, seed=seed)
            return f"latent DDIM-{T_latent} + render DDIM-{T}"
    else:

        def diffae(n: int, warm: bool) -> str:
            gen = torch.Generator(device=device).manual_seed(seed)
            s, d = model.image_size, model.ema_model.decoder.cfg.cond_channels
            x_T = torch.randn(n, 3, s, s, generator=gen, device=device)
            model.render(x_T, torch.randn(n, d, generator=gen, device=device), T=2 if warm else T)
            return f"render DDIM-{T} with random z_sem (no latent DDIM in this model)"

    return [(f"T={T}", diffae)]


def _time_row(job: dict[str, Any], device: torch.device, name: str, fn) -> dict[str, Any]:
    """Warm up once, then time ``repeats`` calls of ``fn(batch_size)`` and keep the median (a shared machine
    has bursts of other work); DDPM is extrapolated from its per-step time."""
    b, times = job["batch_size"], []
    fn(b, True)
    for _ in range(job["repeats"]):
        _sync(device)
        start = time.perf_counter()
        note = fn(b, False)
        _sync(device)
        times.append(time.perf_counter() - start)
    per_sample = statistics.median(times) / b
    measured = not name.startswith("DDPM")
    if not measured:
        per_sample *= job["ddpm_steps"] / job["ddpm_probe_steps"]
        note = f"estimated: {job['ddpm_steps']} × the per-step time of {job['ddpm_probe_steps']} DDPM steps"
    return {
        "method": name,
        "measured": measured,
        "note": note,
        "s_per_sample": per_sample,
        "samples_per_s": 1.0 / per_sample,
        "call_seconds": times,
    }


@torch.no_grad()
def _reconstruction(model, job: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """PSNR/SSIM(/LPIPS) on up to ``max_items`` held-out tiles: one row per kind of code."""
    if job["kind"] == "pixel":
        return []
    from torch.utils.data import DataLoader, Subset

    from rockgen.metrics import ReconstructionMetrics

    spec = job["recon"]
    tiles = tiles_of({**spec["data"], "num_workers": 0}, model.image_size, "val")[1]
    if spec["max_items"] and len(tiles) > spec["max_items"]:
        tiles = Subset(tiles, range(spec["max_items"]))
    T = job["diffae_T"]
    codes = {
        "vae": ["z = μ (decode)"],
        "diffae": [f"z_sem + inferred x_T (DDIM-{T})", f"z_sem only, random x_T (DDIM-{T})"],
    }
    metrics = {name: ReconstructionMetrics().to(device) for name in codes[job["kind"]]}
    gen = torch.Generator(device=device).manual_seed(job["seed"])
    for batch in DataLoader(tiles, batch_size=job["batch_size"]):
        x = batch["img"].to(device)
        target = (x + 1) / 2
        if job["kind"] == "vae":
            metrics["z = μ (decode)"].update(model.reconstruct(x), target)
            continue
        z = model.encode(x)
        inferred, random = metrics
        metrics[inferred].update(model.render(model.encode_stochastic(x, z, T=T), z, T=T), target)
        metrics[random].update(model.render(torch.randn(x.shape, generator=gen, device=device), z, T=T), target)
    return [{"code": name, "tiles": len(tiles), **m.compute()} for name, m in metrics.items()]


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
                f"| {KINDS[m['kind']]} | {_short(m['source'])} | {m['image_size']} | {m['params_m']:.2f} "
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
                f"| {KINDS[m['kind']]} | {_short(m['source'])} | {m['image_size']} | {r['code']} "
                f"| {r['tiles']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {lpips} |"
            )
    return "\n".join(lines) + "\n"


def _short(source: str) -> str:
    """A checkpoint as ``<run>/<file>`` (``<run>/checkpoints/<file>`` → ``<run>/<file>``); presets unchanged."""
    if source.startswith("fresh "):
        return source
    path = Path(source)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return f"{run.name}/{path.name}"


if __name__ == "__main__":  # the isolated worker: python -m rockgen.tasks.compare job.json result.json
    Path(sys.argv[2]).write_text(json.dumps(measure(json.loads(Path(sys.argv[1]).read_text()))))
