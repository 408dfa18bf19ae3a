"""Benchmark a rockgen DiffAE preset: training, DDIM render, DDIM inversion and encode speed, peak memory.

Each configuration (precision x memory format x torch.compile x environment) runs in a fresh subprocess, so
peak RSS (``getrusage`` maxrss right after the training loop; CUDA: ``max_memory_allocated``) and allocator state
never mix between rows. Each measurement runs one warm-up call (excluded), then ``--iters`` timed calls;
images/s = batch / median (``--stat best``: fastest) time of a call.

    train   one optimisation step as Lightning's automatic optimisation runs it, without a Trainer:
            LitModel.optimizer_step(closure) -> AdamW step + LitModel's EMA update, where the closure is
            training_step (under autocast for bf16) -> optimizer_zero_grad -> backward; then the LR scheduler
    render  model.render(noise, z_sem, T)           DDIM-T decoding by the EMA decoder
    invert  model.encode_stochastic(x, z_sem, T)    DDIM-T inversion
    encode  model.encode(x)                         semantic encoder
Render and inversion warm up with a T=2 call (the same network calls and shapes).

Usage:
    python scripts/bench.py --preset rock64 --batch 8 --iters 3          # fp32 and bf16 autocast
    python scripts/bench.py --preset rock64 --iters 2 --malloc-tunables  # + the rows again with GLIBC_TUNABLES
    python scripts/bench.py --channels-last both --compile --omp-passive # more variants
    python scripts/bench.py --preset demo --batch 4 --iters 1 --only train,encode
    python scripts/bench.py --device cuda --precision bf16

On a shared machine: ``--rounds R`` interleaves the configurations R times (times pooled); ``--wait-idle S``
waits up to S seconds for other processes to go quiet; every row records ``other_load`` (cores used by other
processes while it ran) and ``calib_conv_ms``, the time of a fixed fp32 3x3 convolution, which shows how fast
the machine was at that moment. Output: a table on stdout, JSON with machine info in ``--out``
(default ``bench_results/<preset>_<timestamp>.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

# build_model, compile_nets, lightning_train_step: re-exported, bench_data.py and bench_loop.py import them from here
from bench_worker import (  # noqa: F401
    MALLOC_TUNABLES,
    MEASUREMENTS,
    Config,
    build_model,
    compile_nets,
    lightning_train_step,
    run_worker,
    wait_idle,
)

LAYOUTS = {"on": (True,), "off": (False,), "both": (True, False), "preset": (None,)}
COLUMNS = ("train_img_s", "render_img_s", "invert_img_s", "encode_img_s", "peak_rss_gb")
HEADERS = ("train img/s", "render img/s", "invert img/s", "encode img/s", "peak RSS GB")


# ----------------------------------------------------------------------------------------- parent side
def machine_info(threads: int, device: str) -> dict:
    import torch

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": device,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "glibc": "-".join(platform.libc_ver()),
    }
    if device == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def run_config(cfg: Config, args, device: str) -> dict:
    """Measure one configuration in a fresh interpreter; its progress goes to our stderr."""
    load_before = wait_idle(args.wait_idle) if args.wait_idle > 0 else None
    spec = {
        "config": asdict(cfg),
        "preset": args.preset,
        "batch": args.batch,
        "iters": args.iters,
        "T": args.T,
        "threads": args.threads,
        "device": device,
        "only": args.only,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=cfg.env(args.threads), timeout=args.timeout)
        if proc.returncode or not out.exists():
            raise SystemExit(f"benchmark worker for '{cfg.name}' failed (exit code {proc.returncode})")
        row = json.loads(out.read_text())
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    row["other_load_before"] = load_before
    return row


def summarize(rounds: list[dict], batch: int, stat: str) -> dict:
    """One configuration's row from its rounds: images/s from the pooled call times of all rounds (median or
    best call), medians of the other figures; each round's own row is kept under ``rounds``."""
    row = dict(rounds[-1])
    for key in (
        "peak_rss_gb",
        "peak_rss_total_gb",
        "rss_after_build_gb",
        "peak_cuda_gb",
        "calib_conv_ms",
        "other_load",
    ):
        values = [r[key] for r in rounds if r.get(key) is not None]
        if key in row:
            row[key] = round(statistics.median(values), 4) if values else None
    pick = min if stat == "best" else statistics.median
    for what in MEASUREMENTS:
        times = [t for r in rounds for t in r["measured"].get(what, {}).get("times_s", [])]
        row[f"{what}_img_s"] = round(batch / pick(times), 4) if times else None
    if len(rounds) > 1:
        row["rounds"] = rounds
    return row


def format_table(rows: list[dict]) -> str:
    width = max(len(r["config"]) for r in rows) + 2
    extra = ("calib ms", "other load")

    def line(label: str, values) -> str:
        return f"{label:<{width}}" + "".join(
            f"{v:>13.3g}" if isinstance(v, float | int) else f"{'-':>13}" for v in values
        )

    lines = [f"{'config':<{width}}" + "".join(f"{h:>13}" for h in (*HEADERS, *extra))]
    lines += [line(r["config"], [r.get(c) for c in (*COLUMNS, "calib_conv_ms", "other_load")]) for r in rows]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset",
        default="rock64",
        help="a rockgen.presets name (rock64, demo, ...); with --official a comma list of "
        "rock64, rock128, small, tiny (bench_official.CONFIGS)",
    )
    p.add_argument(
        "--official",
        metavar="DIR",
        help="compare with the official DiffAE code checked out in DIR, side by side in this process "
        "(interleaved rounds, medians, ratios; see scripts/bench_official.py)",
    )
    p.add_argument("--quick", action="store_true", help="with --official: tiny net, batch 2, T=3, one round")
    p.add_argument("--skip-memory", action="store_true", help="with --official: no peak-memory subprocesses")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=3, help="timed calls per measurement (after one warm-up)")
    p.add_argument("--T", type=int, default=20, help="DDIM steps of render and inversion")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and OMP_NUM_THREADS")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    p.add_argument(
        "--channels-last",
        default=None,
        choices=("on", "off", "both", "preset"),
        help="memory format rows (default: on; with --official: the preset's own choice)",
    )
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (minutes of compiling)")
    p.add_argument(
        "--inference",
        default="none",
        help="with --official: comma list of model.evaluation.inference_compile values for rockgen's render "
        "and inversion rows (none, freeze: TorchScript trace + freeze of the decoder, rockgen.models.inference)",
    )
    for flag, what in (
        ("--malloc-tunables", f"GLIBC_TUNABLES={MALLOC_TUNABLES}"),
        ("--omp-passive", "OMP_WAIT_POLICY=PASSIVE"),
    ):
        p.add_argument(
            flag,
            nargs="?",
            const="both",
            default="off",
            choices=("off", "both", "only"),
            help=f"rows with {what} beside (both, the default when given) or instead of (only) the rows without",
        )
    p.add_argument("--only", default=",".join(MEASUREMENTS), help="comma list of train,render,invert,encode")
    p.add_argument("--rounds", type=int, default=1, help="measure every config R times, interleaved")
    p.add_argument(
        "--stat",
        default="median",
        choices=("median", "best"),
        help="images/s from the median or the fastest call of all rounds (best: least disturbed by "
        "other processes on a shared machine)",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="S",
        help="before each config wait up to S s for other processes to use < 0.3 cores",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per worker")
    p.add_argument("--out", default=None, help="JSON path (default bench_results/<preset>_<timestamp>.json)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.channels_last is None:
        args.channels_last = "preset" if args.official else "on"
    if args.quick:
        args.preset, args.batch, args.T, args.iters, args.rounds = "tiny", 2, 3, 1, 1
    if args.worker is None:
        args.only = [m.strip() for m in args.only.split(",") if m.strip()]
        if bad := sorted(set(args.only) - set(MEASUREMENTS)):
            p.error(f"--only: unknown {bad}; choose from {', '.join(MEASUREMENTS)}")
        args.precision = [s.strip() for s in args.precision.split(",") if s.strip()]
        if bad := sorted(set(args.precision) - {"fp32", "bf16"}):
            p.error(f"--precision: unknown {bad}; choose from fp32, bf16")
        if min(args.batch, args.iters, args.T, args.threads, args.rounds) < 1:
            p.error("--batch, --iters, --T, --threads and --rounds must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker is not None:
        Path(args.worker_out).write_text(json.dumps(run_worker(json.loads(args.worker))))
        return {}
    if args.official:
        return main_official(args)

    import torch

    device = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch.cuda.is_available() is False")
    layouts = LAYOUTS[args.channels_last]
    choice = {"off": (False,), "both": (False, True), "only": (True,)}
    tunables = choice[args.malloc_tunables] if device == "cpu" else (False,)  # glibc: host memory only
    configs = [
        Config(prec, cl, comp, tun, omp)
        for omp in choice[args.omp_passive]
        for tun in tunables
        for comp in choice["both" if args.compile else "off"]
        for cl in layouts
        for prec in args.precision
    ]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"bench_results/{args.preset}_{stamp}.json")
    print(
        f"benchmarking {args.preset}, batch {args.batch}, {args.iters} iters (+1 warm-up), DDIM T={args.T}, "
        f"{args.threads} threads, {device}: {len(configs)} configs x {args.rounds} round(s) -> {out}",
        file=sys.stderr,
        flush=True,
    )
    measured: dict[Config, list[dict]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for i, cfg in enumerate(configs):
            print(
                f"== round {r + 1}/{args.rounds}, config {i + 1}/{len(configs)}: {cfg.name}",
                file=sys.stderr,
                flush=True,
            )
            measured[cfg].append(run_config(cfg, args, device))
    rows = [summarize(measured[c], args.batch, args.stat) for c in configs]

    table = format_table(rows)
    print(table)
    extra = {"stat": args.stat, "device": device, "measurements": args.only, "malloc_tunables": MALLOC_TUNABLES}
    head = {"preset": args.preset, **extra, "columns": list(COLUMNS)}
    return _write_result(out, args, stamp, machine_info(args.threads, device), head, rows, table)


def main_official(args) -> dict:
    """``--official DIR``: rockgen and the official code side by side in this process (bench_official)."""
    import bench_official as bo
    import torch

    configs = [c.strip() for c in args.preset.split(",") if c.strip()]
    if bad := sorted(set(configs) - set(bo.CONFIGS)):
        raise SystemExit(f"--preset with --official: unknown {bad}; choose from {', '.join(bo.CONFIGS)}")
    if not Path(args.official).is_dir():
        raise SystemExit(f"--official {args.official}: no such folder (a checkout of phizaz/diffae)")
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"bench_results/official_{'-'.join(configs)}_{stamp}.json")
    modes = [m.strip() for m in args.inference.split(",") if m.strip()]
    if bad := sorted(set(modes) - {"none", "freeze"}):
        raise SystemExit(f"--inference: unknown {bad}; choose from none, freeze")
    variants = [
        {"channels_last": cl, "compile_nets": comp, "inference_compile": mode}
        for comp in ((False, True) if args.compile else (False,))
        for cl in LAYOUTS[args.channels_last]
        for mode in modes
    ]
    rows = []
    for config in configs:
        for precision in args.precision:
            for kw in variants:
                _log_parent(f"== {config} {precision} rockgen {kw} vs official, {args.rounds} round(s)")
                row = bo.compare(args, device, precision, config, kw)
                if not args.skip_memory and not kw["compile_nets"] and kw["inference_compile"] == "none":
                    row["memory"] = bo.measure_memory(args, device, precision, config, kw)
                rows.append(row)
                print(bo.format_rows(rows[-1:]).splitlines()[1], file=sys.stderr, flush=True)
    table = bo.format_rows(rows)
    print(table)
    head = {"configs": configs, "official": str(Path(args.official).resolve())}
    return _write_result(out, args, stamp, machine_info(args.threads, device.type), head, rows, table)


def _write_result(out: Path, args, stamp: str, machine: dict, head: dict, rows: list, table: str) -> dict:
    """Write a run's JSON: ``head``, the settings every run records, the machine, its rows and table."""
    settings = {"batch": args.batch, "iters": args.iters, "T": args.T, "rounds": args.rounds, "created": stamp}
    result = {**head, **settings, "machine": machine, "rows": rows, "table": table}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return result


def _log_parent(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
