"""Benchmark a rockgen DiffAE preset: training, DDIM render, DDIM inversion and encode throughput, peak memory.

Every configuration (precision × memory format × torch.compile × allocator tunables) runs in its own fresh
subprocess, so peak RSS (``resource.getrusage`` maxrss, read right after the training loop) and allocator state
never mix between rows. Within a worker, each measurement runs one excluded warm-up iteration, then ``--iters``
timed ones; images/s = batch / median iteration time.

    train   one optimisation step as Lightning runs it, without the Trainer: LitModel.training_step (under
            autocast for bf16) -> zero_grad(set_to_none) -> backward -> AdamW step (+ LR scheduler) -> EMA update
    render  model.render(noise, z_sem, T)            (DDIM-T decoding by the EMA decoder)
    invert  model.encode_stochastic(x, z_sem, T)     (DDIM-T inversion)
    encode  model.encode(x)                          (semantic encoder)
The warm-up of render/invert is a T=2 call (same shapes and kernels as the timed T-step calls).

Usage:
    python scripts/bench.py --preset rock64 --batch 8 --iters 3                  # fp32 and bf16, channels_last
    python scripts/bench.py --preset rock64 --iters 2 --malloc-tunables          # + the same rows with GLIBC_TUNABLES
    python scripts/bench.py --preset rock64 --channels-last both --compile       # more variants
    python scripts/bench.py --preset demo --batch 4 --iters 1 --only train,encode
    python scripts/bench.py --device cuda --precision bf16                       # CUDA: peak = max_memory_allocated

Configurations can be interleaved over ``--rounds R`` (median reported) to average out a noisy shared machine.
Results: a table on stdout and JSON (default ``bench_results/<preset>_<timestamp>.json``) with machine info.
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
from dataclasses import asdict, dataclass
from pathlib import Path

MEASUREMENTS = ("train", "render", "invert", "encode")
COLUMNS = ("train_img_s", "render_img_s", "invert_img_s", "encode_img_s", "peak_rss_gb")
HEADERS = ("train img/s", "render img/s", "invert img/s", "encode img/s", "peak RSS GB")
# Keep large activations on the heap instead of mmap/munmap (and page-faulting) them on every step.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
# Official DiffAE (phizaz/diffae) at ffhq64_autoenc = rock64, batch 8, 2 CPU threads, fp32, on this machine type
# (shared/ENVIRONMENT.md). Used only for the "x official" rows; higher is better except for RSS.
OFFICIAL_ROCK64 = {"train_img_s": 3.0, "render_img_s": 0.56, "invert_img_s": 0.52, "encode_img_s": 83.0,
                   "peak_rss_gb": 3.9}


@dataclass(frozen=True)
class Config:
    """One row of the table, measured in one subprocess."""

    precision: str  # fp32 or bf16 (autocast)
    channels_last: bool
    compile: bool = False
    malloc_tunables: bool = False  # GLIBC_TUNABLES=MALLOC_TUNABLES in the worker's environment
    omp_passive: bool = False  # OMP_WAIT_POLICY=PASSIVE in the worker's environment

    @property
    def name(self) -> str:
        parts = [self.precision, "cl" if self.channels_last else "nchw"]
        parts += ["+compile"] * self.compile + ["+tunables"] * self.malloc_tunables + ["+passive"] * self.omp_passive
        return " ".join(parts)

    def env(self, threads: int) -> dict[str, str]:
        """The worker's environment: ours minus the variables under test, plus those this row sets."""
        env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "OMP_WAIT_POLICY")}
        env["OMP_NUM_THREADS"] = str(threads)
        if self.malloc_tunables:
            env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        if self.omp_passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        return env


# ------------------------------------------------------------------------------------------------ worker side
def _log(tag: str, msg: str) -> None:
    print(f"[{tag}] {msg}", file=sys.stderr, flush=True)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_gb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * (1 if sys.platform != "darwin" else 1 / 1024) / 2**20


def _cpu_busy_s() -> float:
    """Seconds of CPU time spent by every process on the machine since boot (/proc/stat), or 0 if unknown."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def other_load(busy0: float, own0: float, wall0: float) -> float:
    """Average number of cores used by *other* processes since (busy0, own0, wall0): the noise of a run."""
    own = sum(os.times()[:2])
    return max(0.0, (_cpu_busy_s() - busy0 - (own - own0)) / max(time.perf_counter() - wall0, 1e-9))


def _counters() -> tuple[float, float, float]:
    return _cpu_busy_s(), sum(os.times()[:2]), time.perf_counter()


def _timed(tag: str, what: str, fn, iters: int, device, warmup_fn=None) -> tuple[list[float], float]:
    """Run warmup_fn (or fn) once untimed, then fn ``iters`` times.

    Returns the seconds of each timed call and the other processes' average CPU use (cores) meanwhile.
    """
    t0 = time.perf_counter()
    (warmup_fn or fn)()
    _sync(device)
    _log(tag, f"{what}: warm-up {time.perf_counter() - t0:.2f} s")
    times, start = [], _counters()
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        _log(tag, f"{what}: iter {i + 1}/{iters} {times[-1]:.2f} s")
    load = other_load(*start)
    if load > 0.25:
        _log(tag, f"{what}: other processes used {load:.2f} cores meanwhile: figures are noisy")
    return times, round(load, 2)


def build_model(preset: str, channels_last: bool):
    """The preset's LightningModule (``node['model']`` minus ``_target_`` are its kwargs)."""
    from hydra.utils import get_class

    import templates

    presets = templates.presets()
    if preset not in presets:
        raise SystemExit(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    node = dict(presets[preset]["model"])
    cls = get_class(node.pop("_target_"))
    return cls(**{**node, "channels_last": channels_last})


def run_worker(spec: dict) -> dict:
    """Measure one configuration in this (fresh) process and return its row."""
    import warnings

    import torch

    from rockgen.ema import ema_decay, ema_update_module_

    warnings.filterwarnings("ignore")  # LightningModule.log without a Trainer warns on every step
    cfg = Config(**spec["config"])
    tag, iters, batch, T = cfg.name, spec["iters"], spec["batch"], spec["T"]
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    model = build_model(spec["preset"], cfg.channels_last).to(device)
    size = model.image_size
    if cfg.compile:
        for net in (model.model, model.ema_model):
            net.encoder = torch.compile(net.encoder)
            net.decoder = torch.compile(net.decoder)
    n_params = sum(p.numel() for p in model.model.parameters())
    _log(tag, f"{spec['preset']}: {n_params / 1e6:.2f} M params, {size} px, batch {batch}, "
              f"{torch.get_num_threads()} threads, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")

    def autocast():
        if cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    row: dict = {"config": cfg.name, **asdict(cfg), "params_m": round(n_params / 1e6, 2),
                 "rss_after_build_gb": round(_rss_gb(), 3), "times_s": {}, "other_load": {}}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if "train" in spec["only"]:
        model.train()
        optim = model.configure_optimizers()
        opt, sched = optim["optimizer"], optim.get("lr_scheduler", {}).get("scheduler")
        step = [0]

        def train_step() -> None:
            # Lightning's automatic optimisation: forward, zero_grad, backward, optimizer step, then our hook.
            with autocast():
                loss = model.training_step({"img": x}, step[0])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            conf = model.ema_conf
            decay = ema_decay(step[0], conf.decay, "tf" if conf.warmup else None)
            ema_update_module_(model.ema_model, model.model, decay)
            step[0] += 1

        row["times_s"]["train"], row["other_load"]["train"] = _timed(tag, "train step", train_step, iters, device)
        opt.zero_grad(set_to_none=True)
        del opt, optim, sched
    # Training peak: taken before inference so it is the peak of model build + training only.
    row["peak_rss_gb"] = round(_rss_gb(), 3)
    if device.type == "cuda":
        row["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)

    model.eval()
    with autocast():
        cond = model.encode(x)
    noise = torch.randn_like(x)
    for what, fn, warm in (
        ("render", lambda T_: model.render(noise, cond, T=T_), True),
        ("invert", lambda T_: model.encode_stochastic(x, cond, T=T_), True),
        ("encode", lambda T_: model.encode(x), False),
    ):
        if what not in spec["only"]:
            continue

        def call(T_=T, fn=fn):
            with autocast():
                fn(T_)

        warmup = (lambda call=call: call(min(2, T))) if warm else None
        label = f"{what} (T={T})" if warm else what
        row["times_s"][what], row["other_load"][what] = _timed(tag, label, call, iters, device, warmup)
    row["peak_rss_total_gb"] = round(_rss_gb(), 3)
    for what in MEASUREMENTS:
        times = row["times_s"].get(what)
        row[f"{what}_img_s"] = round(batch / statistics.median(times), 4) if times else None
    return row


# ------------------------------------------------------------------------------------------------ parent side
def machine_info(threads: int, device: str) -> dict:
    import torch

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cpu_model": cpu, "cpu_count": os.cpu_count(), "threads": threads, "device": device,
            "mkldnn": torch.backends.mkldnn.is_available(), "glibc": "-".join(platform.libc_ver())}
    if device == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def run_config(cfg: Config, args, device: str) -> dict:
    """Run one configuration in a fresh interpreter; its progress goes to our stderr."""
    load_before = wait_idle(args.wait_idle) if args.wait_idle > 0 else None
    env = cfg.env(args.threads)
    spec = {"config": asdict(cfg), "preset": args.preset, "batch": args.batch, "iters": args.iters, "T": args.T,
            "threads": args.threads, "device": device, "only": args.only}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, timeout=args.timeout)  # progress goes straight to our stderr
        if proc.returncode or not out.exists():
            raise SystemExit(f"benchmark worker for '{cfg.name}' failed (exit code {proc.returncode})")
        row = json.loads(out.read_text())
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    row["other_load_before"] = load_before
    return row


def wait_idle(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most max_wait s) until other processes use < threshold cores; return the last load seen."""
    deadline = time.monotonic() + max_wait
    while True:
        start = _counters()
        time.sleep(2.0)
        load = other_load(*start)
        if load < threshold or time.monotonic() >= deadline:
            return round(load, 2)
        print(f"   waiting for a quiet machine: other processes use {load:.2f} cores", file=sys.stderr, flush=True)


def median_rows(rounds: list[dict]) -> dict:
    """Merge the rows of one configuration measured in several rounds: median of every number."""
    row = dict(rounds[0])
    for key in (*COLUMNS, "peak_rss_total_gb", "rss_after_build_gb", "peak_cuda_gb"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        if key in row:
            row[key] = round(statistics.median(values), 4) if values else None
    row["rounds"] = rounds
    return row


def format_table(rows: list[dict], reference: dict | None) -> str:
    width = max([len(r["config"]) for r in rows] + [len("official DiffAE"), 6]) + 2
    fmt = lambda v: f"{v:>13.3g}" if isinstance(v, (int, float)) else f"{'-':>13}"
    lines = [f"{'config':<{width}}" + "".join(f"{h:>13}" for h in HEADERS)]
    lines += [f"{r['config']:<{width}}" + "".join(fmt(r.get(c)) for c in COLUMNS) for r in rows]
    if reference:
        lines.append(f"{'official DiffAE':<{width}}" + "".join(fmt(reference.get(c)) for c in COLUMNS))
        lines.append("ratios vs official (speed: ours/official, higher is better; RSS: official/ours):")
        for r in rows:
            ratios = [None if r.get(c) is None else
                      (reference[c] / r[c] if c == "peak_rss_gb" else r[c] / reference[c]) for c in COLUMNS]
            lines.append(f"{r['config']:<{width}}" + "".join(fmt(v) for v in ratios))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="rock64", help="a templates.presets() name (rock64, demo, ...)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=3, help="timed iterations per measurement (after 1 warm-up)")
    p.add_argument("--T", type=int, default=20, help="DDIM steps of render and inversion")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads and OMP_NUM_THREADS")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    p.add_argument("--channels-last", default="on", choices=("on", "off", "both"))
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (slow first compile)")
    p.add_argument("--malloc-tunables", action="store_true",
                   help=f"add rows with GLIBC_TUNABLES={MALLOC_TUNABLES}")
    p.add_argument("--omp-passive", action="store_true",
                   help="add rows with OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning)")
    p.add_argument("--wait-idle", type=float, default=0, metavar="S",
                   help="before each config wait up to S s for other processes to use < 0.3 cores")
    p.add_argument("--only", default=",".join(MEASUREMENTS), help="comma list of train,render,invert,encode")
    p.add_argument("--rounds", type=int, default=1, help="measure every config R times, interleaved; median")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    p.add_argument("--out", default=None, help="JSON path (default bench_results/<preset>_<timestamp>.json)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None:
        args.only = [m.strip() for m in args.only.split(",") if m.strip()]
        if bad := sorted(set(args.only) - set(MEASUREMENTS)):
            p.error(f"--only: unknown {bad}; choose from {MEASUREMENTS}")
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

    import torch

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch.cuda.is_available() is False")
    layouts = {"on": (True,), "off": (False,), "both": (True, False)}[args.channels_last]
    flags = lambda on: (False, True)[: 1 + bool(on)]
    configs = [Config(prec, cl, comp, tun, omp) for omp in flags(args.omp_passive) for tun in flags(args.malloc_tunables)
               for comp in flags(args.compile) for cl in layouts for prec in args.precision]
    if device == "cuda":  # glibc tunables only matter for host memory
        configs = [c for c in configs if not c.malloc_tunables]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"bench_results/{args.preset}_{stamp}.json")
    print(f"benchmarking {args.preset}, batch {args.batch}, {args.iters} iters (+1 warm-up), T={args.T}, "
          f"{args.threads} threads, {device}: {len(configs)} configs x {args.rounds} round(s) -> {out}",
          file=sys.stderr, flush=True)

    measured: dict[Config, list[dict]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for i, cfg in enumerate(configs):
            print(f"== round {r + 1}/{args.rounds}, config {i + 1}/{len(configs)}: {cfg.name}", file=sys.stderr,
                  flush=True)
            measured[cfg].append(run_config(cfg, args, device))
    rows = [median_rows(measured[c]) if args.rounds > 1 else measured[c][0] for c in configs]

    reference = None
    if args.preset in ("rock64", "rock64_autoenc") and args.batch == 8 and args.threads == 2 and device == "cpu":
        reference = OFFICIAL_ROCK64
    table = format_table(rows, reference)
    print(table)
    result = {"preset": args.preset, "batch": args.batch, "iters": args.iters, "T": args.T, "rounds": args.rounds,
              "device": device, "measurements": args.only, "created": stamp, "machine": machine_info(args.threads, device),
              "malloc_tunables_value": MALLOC_TUNABLES, "reference_official": reference, "columns": list(COLUMNS),
              "rows": rows, "table": table}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
