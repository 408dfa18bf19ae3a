"""The worker side of scripts/bench.py: one configuration measured in a fresh process (``run_worker``), with the
timing, machine-load and peak-memory helpers that bench.py, bench_official.py, bench_data.py and bench_loop.py share
(``build_model``, ``lightning_train_step`` ... stay importable from ``bench`` too)."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

MEASUREMENTS = ("train", "render", "invert", "encode")
# Keep freed activations on the heap instead of returning them to the OS (and page-faulting them in again).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


@dataclass(frozen=True)
class Config:
    """One row of the table, measured in its own subprocess."""

    precision: str  # fp32 or bf16 (autocast)
    channels_last: bool
    compile: bool = False
    malloc_tunables: bool = False  # GLIBC_TUNABLES=MALLOC_TUNABLES in the worker's environment
    omp_passive: bool = False  # OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep instead of spinning

    @property
    def name(self) -> str:
        flags = {"+compile": self.compile, "+tunables": self.malloc_tunables, "+passive": self.omp_passive}
        return " ".join([self.precision, "cl" if self.channels_last else "nchw"] + [k for k, v in flags.items() if v])

    def env(self, threads: int) -> dict[str, str]:
        """The worker's environment: ours without the variables under test, plus those this row sets."""
        env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "OMP_WAIT_POLICY")}
        env["OMP_NUM_THREADS"] = str(threads)
        if self.malloc_tunables:
            env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        if self.omp_passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        return env


# ----------------------------------------------------------------------------------------- machine load
def _cpu_busy_s() -> float:
    """CPU seconds used by every process on the machine since boot (/proc/stat); 0 where unknown."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _counters() -> tuple[float, float, float]:
    return _cpu_busy_s(), sum(os.times()[:2]), time.perf_counter()


def other_load(start: tuple[float, float, float]) -> float:
    """Average number of cores other processes used since ``start = _counters()``."""
    busy, own, wall = _counters()
    return max(0.0, (busy - start[0] - (own - start[1])) / max(wall - start[2], 1e-9))


def wait_idle(max_wait: float, threshold: float = 0.3) -> float:
    """Wait at most max_wait s until other processes use < threshold cores; return the last load seen."""
    deadline = time.monotonic() + max_wait
    while True:
        start = _counters()
        time.sleep(2.0)
        load = other_load(start)
        if load < threshold or time.monotonic() >= deadline:
            return round(load, 2)
        print(f"   waiting for a quiet machine: others use {load:.2f} cores", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- worker side
def _log(tag: str, msg: str) -> None:
    print(f"[{tag}] {msg}", file=sys.stderr, flush=True)


def _rss_gb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)


def calibrate(device) -> float:
    """Best of 2 of one fp32 channels_last conv3x3 128->128 on (8, 128, 64, 64), in ms: how fast the machine is
    right now, to compare rows and runs measured under different load (shared/ENVIRONMENT.md: 20-22 ms; 44 ms was
    measured on 2026-11-23 with no other process running, so the host itself varies too)."""
    import torch

    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(device, memory_format=torch.channels_last)
    x = torch.randn(8, 128, 64, 64, device=device).to(memory_format=torch.channels_last)
    times = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            conv(x)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return round(min(times[1:]) * 1e3, 2)


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(tag: str, what: str, fn, iters: int, device, warmup=None) -> dict:
    """One untimed warm-up call (``warmup`` or ``fn``), then ``iters`` timed calls of fn."""
    t0 = time.perf_counter()
    (warmup or fn)()
    _sync(device)
    _log(tag, f"{what}: warm-up {time.perf_counter() - t0:.2f} s")
    times, start, faults = [], _counters(), _minor_faults()
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(round(time.perf_counter() - t0, 4))
        _log(tag, f"{what}: {i + 1}/{iters} {times[-1]:.2f} s")
    load = round(other_load(start), 2)
    faults = (_minor_faults() - faults) // iters
    if load > 0.25:
        _log(tag, f"{what}: other processes used {load:.2f} cores meanwhile: the times are noisy")
    # Page faults per call: memory the allocator got fresh from the OS (what GLIBC_TUNABLES can avoid).
    return {"times_s": times, "page_faults": faults, "other_load": load, "calib_conv_ms": calibrate(device)}


def build_model(preset: str, channels_last, overrides: dict | None = None):
    """The preset's LightningModule: ``rockgen.presets.presets()[preset]["model"]`` minus ``_target_``: kwargs;
    ``overrides`` = {section: {key: value}} updates sections (e.g. unet widths), ``channels_last`` None keeps
    the preset's memory format."""
    from hydra.utils import get_class

    from rockgen import presets as templates

    presets = templates.presets()
    if preset not in presets:
        raise SystemExit(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    node = dict(presets[preset]["model"])
    for section, values in (overrides or {}).items():
        node[section] = {**node[section], **values}
    if channels_last is not None:
        node["channels_last"] = channels_last
    return get_class(node.pop("_target_"))(**node)


def compile_nets(model) -> None:
    """torch.compile the encoders and decoders of the model and its EMA copy (compiled on their first call)."""
    import torch

    for net in (model.model, model.ema_model):
        net.encoder, net.decoder = torch.compile(net.encoder), torch.compile(net.decoder)


def lightning_train_step(model, batch: dict, autocast, clip: float | None = None):
    """A function doing one step of Lightning's automatic optimisation of ``model``, without a Trainer.

    Lightning calls ``model.optimizer_step(epoch, batch_idx, optimizer, closure)`` (LitModel adds its EMA update
    there, reading ``trainer.global_step``); the closure runs training_step, then optimizer_zero_grad, then
    backward; ``clip``: then the gradient-norm clipping Lightning applies with ``gradient_clip_val``.
    """
    optim = model.configure_optimizers()
    opt = optim["optimizer"] if isinstance(optim, dict) else optim
    sched = optim.get("lr_scheduler", {}).get("scheduler") if isinstance(optim, dict) else None
    import torch

    trainer = SimpleNamespace(global_step=0)  # all that LitModel.optimizer_step reads from its Trainer

    def closure():
        model._trainer = None  # without a Trainer, self.log() in training_step is a no-op
        with autocast():
            loss = model.training_step(batch, trainer.global_step)
        model.optimizer_zero_grad(0, trainer.global_step, opt)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        model._trainer = trainer
        return loss

    def step() -> None:
        model._trainer = trainer
        try:
            model.optimizer_step(0, trainer.global_step, opt, closure)
        finally:
            model._trainer = None
        if sched is not None:
            sched.step()
        trainer.global_step += 1

    return step, opt


def run_worker(spec: dict) -> dict:
    """Measure one configuration in this fresh process; return its row."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")  # LightningModule.log without a Trainer warns on every step
    cfg = Config(**spec["config"])
    tag, iters, batch, T = cfg.name, spec["iters"], spec["batch"], spec["T"]
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    model = build_model(spec["preset"], cfg.channels_last).to(device)
    if cfg.compile:
        compile_nets(model)
    n_params = sum(p.numel() for p in model.model.parameters())
    size = model.image_size
    _log(
        tag,
        f"{spec['preset']}: {n_params / 1e6:.2f} M params, {size} px, batch {batch}, {torch.get_num_threads()}"
        f" threads, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')!r}",
    )

    def autocast():
        if cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    row: dict = {
        "config": cfg.name,
        **asdict(cfg),
        "params_m": round(n_params / 1e6, 2),
        "rss_after_build_gb": round(_rss_gb(), 3),
        "measured": {},
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if "train" in spec["only"]:
        model.train()
        step, opt = lightning_train_step(model, {"img": x}, autocast)
        row["measured"]["train"] = _timed(tag, "train step", step, iters, device)
        opt.zero_grad(set_to_none=True)
        del step, opt
    row["peak_rss_gb"] = round(_rss_gb(), 3)  # before inference: the peak of build + training only
    if device.type == "cuda":
        row["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)

    model.eval()
    with autocast():
        cond = model.encode(x)
    noise = torch.randn_like(x)
    calls = {
        "render": lambda steps: model.render(noise, cond, T=steps),
        "invert": lambda steps: model.encode_stochastic(x, cond, T=steps),
        "encode": lambda steps: model.encode(x),
    }
    for what, fn in calls.items():
        if what not in spec["only"]:
            continue

        def call(steps=T, fn=fn):
            with autocast():
                fn(steps)

        sampler = what != "encode"
        warmup = (lambda call=call: call(min(2, T))) if sampler else None
        row["measured"][what] = _timed(tag, f"{what} (T={T})" if sampler else what, call, iters, device, warmup)
    row["peak_rss_total_gb"] = round(_rss_gb(), 3)
    for what in MEASUREMENTS:
        m = row["measured"].get(what)
        row[f"{what}_img_s"] = round(batch / statistics.median(m["times_s"]), 4) if m else None
    calib = [m["calib_conv_ms"] for m in row["measured"].values()]
    row["calib_conv_ms"] = statistics.median(calib) if calib else None
    row["other_load"] = max((m["other_load"] for m in row["measured"].values()), default=None)
    return row


# ----------------------------------------------------------------------------------------- peak memory (Linux)
def _vm_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB
    raise KeyError(field)


def _reset_peak_rss() -> float | None:
    """Reset the kernel's peak-RSS mark (Linux: ``5 > /proc/self/clear_refs``) so importing's transient peak
    does not hide a small net's training peak; return the current RSS in GB (None where unsupported)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _vm_gb("VmRSS")
    except (OSError, KeyError):
        return None
