"""rockgen vs the official DiffAE code (phizaz/diffae), side by side in one process: ``bench.py --official DIR``.

Both networks are built at the same configuration, batch, threads and precision; the measurements alternate
between the two implementations round after round (ABBA order), and the table prints medians and the ratio
rockgen / official (> 1 = rockgen faster). The official code is imported from ``DIR`` at run time (never copied):

    train   rockgen: LitModel.optimizer_step as Lightning's automatic optimisation calls it (training_step,
            backward, gradient clipping at 1.0, fused AdamW, EMA update); official: the same step of its
            ``experiment.LitModel`` written out (T_sampler, ``training_losses``, backward, clip 1.0, its Adam,
            its ``ema``)
    render  DDIM-T decoding by the EMA decoder (official: ``render_condition`` with ``_make_diffusion_conf(T)``)
    invert  DDIM-T inversion (official: ``ddim_reverse_sample_loop``)
    memory  peak training memory: each side in a fresh subprocess (build + 3 training steps); CPU: peak RSS
            minus the RSS after imports, CUDA: ``max_memory_allocated``

Configurations (``CONFIGS``): rock64 = official ffhq64_autoenc, rock128 = ffhq128_autoenc, small = ch 32,
decoder mult 1,2,2,2, encoder mult 1,2,2,2,2 at 64 px, tiny = a 32 px ch-32 two-level net for the quick test.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import bench_worker as bw
from bench_worker import _reset_peak_rss, _sync, _vm_gb

# name -> (official template, rockgen preset, overrides of both: net_ch, decoder mult, encoder mult, img size)
CONFIGS = {
    "rock64": ("ffhq64_autoenc", "rock64", None),
    "rock128": ("ffhq128_autoenc_base", "rock128", None),
    "small": ("ffhq64_autoenc", "rock64", (32, (1, 2, 2, 2), (1, 2, 2, 2, 2), 64)),
    "tiny": ("ffhq64_autoenc", "rock64", (32, (1, 2), (1, 2, 2), 32)),
}
WHATS = ("train", "render", "invert")
# The official code imports these at module level but the benchmark never calls them (FID, old numpy).
_STUBS = ("pytorch_fid", "pytorch_fid.fid_score", "numpy.lib.function_base")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def official_imports(folder: Path):
    """Import the official code from ``folder``: its top-level modules (``templates``, ``config``,
    ``experiment``, ``model``, ``diffusion`` ...) share names with rockgen's, so rockgen's entries are moved
    aside while it imports and put back afterwards; the official modules stay reachable through the objects
    the caller keeps (their own imports are resolved at import time)."""
    import numpy

    folder = folder.resolve()
    if not (folder / "templates.py").is_file() or not (folder / "model" / "unet_autoenc.py").is_file():
        raise SystemExit(f"--official {folder}: not a checkout of phizaz/diffae (no templates.py, model/)")
    saved = dict(sys.modules)
    local = {p.stem for p in folder.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    for name in list(sys.modules):
        if name.split(".")[0] in local:
            del sys.modules[name]
    for name in _STUBS:
        if name not in sys.modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
                continue
            stub = types.ModuleType(name)
            stub.__path__ = []
            stub.flip = numpy.flip  # numpy.lib.function_base.flip moved to numpy.flip
            sys.modules[name] = stub
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name in list(sys.modules):
            if name.split(".")[0] in local or name in _STUBS:
                del sys.modules[name]
        sys.modules.update({k: v for k, v in saved.items() if k.split(".")[0] in local})


class Official:
    """The official DiffAE autoencoder at one configuration: model, EMA, samplers, optimiser."""

    def __init__(self, folder: Path, config: str, device, channels_last: bool = False):
        import torch

        template, _, over = CONFIGS[config]
        with official_imports(folder):
            templates = importlib.import_module("templates")
            experiment = importlib.import_module("experiment")
            renderer = importlib.import_module("renderer")
            conf = getattr(templates, template)()
            if over is not None:
                conf.net_ch, conf.net_ch_mult, conf.net_enc_channel_mult, conf.img_size = over
                conf.make_model_conf()
            self.model = conf.make_model_conf().make_model().to(device)
            self.sampler = conf.make_diffusion_conf().make_sampler()
            self.T_sampler = conf.make_T_sampler()
            self._samplers = {}
        self.conf, self.experiment, self.renderer = conf, experiment, renderer
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt)
        self.ema_model.to(memory_format=fmt)
        cls = torch.optim.Adam if conf.optimizer.value == "adam" else torch.optim.AdamW
        self.opt = cls(self.model.parameters(), lr=conf.lr, weight_decay=conf.weight_decay)
        self.image_size = conf.img_size

    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def sampler_T(self, T: int):
        if T not in self._samplers:
            self._samplers[T] = self.conf._make_diffusion_conf(T).make_sampler()
        return self._samplers[T]

    def train_step(self, x) -> None:
        """official ``LitModel.training_step`` + Lightning's clip (gradient_clip_val=grad_clip) + optimizer step
        + ``on_train_batch_end``'s EMA, written out without pytorch_lightning's Trainer."""
        import torch

        self.model.train()
        t, _ = self.T_sampler.sample(len(x), x.device)
        loss = self.sampler.training_losses(model=self.model, x_start=x, t=t)["loss"].mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.conf.grad_clip)
        self.opt.step()
        self.experiment.ema(self.model, self.ema_model, self.conf.ema_decay)

    def encode(self, x):
        return self.ema_model.encoder.forward(x)

    def render(self, noise, cond, T: int):
        return self.renderer.render_condition(self.conf, self.ema_model, noise, sampler=self.sampler_T(T), cond=cond)

    def invert(self, x, cond, T: int):
        return self.sampler_T(T).ddim_reverse_sample_loop(self.ema_model, x, model_kwargs={"cond": cond})["sample"]


class Rockgen:
    """rockgen's LitModel at the same configuration, trained as bench.py's ``lightning_train_step`` does."""

    def __init__(
        self,
        config: str,
        device,
        channels_last: bool | None = None,
        compile_nets: bool = False,
        inference_compile: str = "none",
    ):
        from dataclasses import replace

        _, preset, over = CONFIGS[config]
        model_over = {}
        if over is not None:
            ch, dec, enc, size = over
            model_over = {
                "unet": {"model_channels": ch, "channel_mult": list(dec), "image_size": size},
                "encoder": {"model_channels": ch, "channel_mult": list(enc), "image_size": size},
            }
        self.lit = bw.build_model(preset, channels_last, model_over).to(device)
        self.compiled = compile_nets
        if compile_nets:
            bw.compile_nets(self.lit)
        self.lit.eval_conf = replace(self.lit.eval_conf, inference_compile=inference_compile)
        self.image_size = self.lit.image_size
        self._step = None

    def n_params(self) -> int:
        return sum(p.numel() for p in self.lit.model.parameters())

    def trace_s(self) -> float | None:
        """Seconds spent tracing + freezing the decoder (model.evaluation.inference_compile=freeze), else None."""
        from rockgen.models.inference import inference_fn

        if self.lit.eval_conf.inference_compile == "none":
            return None
        return round(inference_fn(self.lit.ema_model.decoder, self.lit.eval_conf.inference_compile).build_s, 2)

    def traces(self) -> int | None:
        from rockgen.models.inference import inference_fn

        if self.lit.eval_conf.inference_compile == "none":
            return None
        return inference_fn(self.lit.ema_model.decoder, self.lit.eval_conf.inference_compile).builds

    def train_step(self, x) -> None:
        if self._step is None:
            self._step, _ = bw.lightning_train_step(self.lit, {"img": x}, contextlib.nullcontext, clip=1.0)
        self.lit.train()
        self._step()

    def encode(self, x):
        return self.lit.encode(x)

    def render(self, noise, cond, T: int):
        return self.lit.render(noise, cond, T=T)

    def invert(self, x, cond, T: int):
        return self.lit.encode_stochastic(x, cond, T=T)


def compare(args, device, precision: str, config: str, rockgen_kw: dict) -> dict:
    """Interleaved rounds of train / render / invert for both sides at one precision; medians and ratios."""
    import torch

    torch.manual_seed(0)
    sides = {
        "official": Official(Path(args.official), config, device),
        "rockgen": Rockgen(config, device, **rockgen_kw),
    }
    n = {k: s.n_params() for k, s in sides.items()}
    if n["official"] != n["rockgen"]:
        raise SystemExit(f"{config}: parameter counts differ (official {n['official']}, rockgen {n['rockgen']})")
    size, batch, T = sides["rockgen"].image_size, args.batch, args.T
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    noise = torch.randn_like(x)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def call(side, what: str, steps: int):
        with amp:
            if what == "train":
                return side.train_step(x)
            with torch.no_grad():
                cond = side.encode(x)
                fn = side.render if what == "render" else side.invert
                return fn(noise if what == "render" else x, cond, steps)

    times: dict[str, dict[str, list[float]]] = {k: {w: [] for w in WHATS if w in args.only} for k in sides}
    # CPU seconds of this process per call: on a shared machine the wall time of one call varied 4x between
    # rounds (other processes took the cores), its CPU time far less; both sides are measured the same way.
    cpu_times: dict[str, dict[str, list[float]]] = {k: {w: [] for w in d} for k, d in times.items()}
    warm = {}
    for name, side in sides.items():  # one untimed call each (T=2 for the samplers: same shapes, same kernels)
        t0 = time.perf_counter()
        for what in times[name]:
            call(side, what, 2)
        _sync(device)
        warm[name] = round(time.perf_counter() - t0, 2)
        _log(f"[{config} {precision}] {name}: {n[name] / 1e6:.2f} M params, warm-up {warm[name]:.1f} s")
    order = list(sides)
    retrace = sides["rockgen"].trace_s() is not None and "train" in times["rockgen"]
    for r in range(args.rounds):
        for what in next(iter(times.values())):
            if retrace and what != "train":  # the training steps changed the weights: trace again, untimed
                call(sides["rockgen"], what, 2)
            for name in order if r % 2 == 0 else order[::-1]:  # ABBA: neither side always runs first
                for _ in range(args.iters):
                    t0, c0 = time.perf_counter(), time.process_time()
                    call(sides[name], what, T)
                    _sync(device)
                    times[name][what].append(round(time.perf_counter() - t0, 4))
                    cpu_times[name][what].append(round(time.process_time() - c0, 4))
                _log(f"[{config} {precision}] round {r + 1}/{args.rounds} {what} {name}: {times[name][what][-1]:.2f} s")
    med = {k: {w: statistics.median(v) for w, v in d.items()} for k, d in times.items()}
    med_cpu = {k: {w: statistics.median(v) for w, v in d.items()} for k, d in cpu_times.items()}
    return {
        "config": config,
        "precision": precision,
        "params_m": round(n["rockgen"] / 1e6, 2),
        "batch": batch,
        "T": T,
        "rockgen_options": {k: v for k, v in rockgen_kw.items()},
        "warmup_s": warm,
        # torch.compile compiles on the first calls: the warm-up time is the compile cost
        "compile_s": warm["rockgen"] if sides["rockgen"].compiled else None,
        # inference_compile=freeze traces on the first render/inversion (and again after each training step's
        # EMA update when train is measured too: the sum over all traces, one-off per weights when sampling only)
        "trace_s": sides["rockgen"].trace_s(),
        "traces": sides["rockgen"].traces(),
        "times_s": times,
        "median_s": med,
        "ratio": {w: round(med["official"][w] / med["rockgen"][w], 3) for w in med["rockgen"]},
        "cpu_times_s": cpu_times,
        "median_cpu_s": med_cpu,
        # the same ratio from CPU time (on CUDA the host's CPU time says little: use "ratio" there)
        "ratio_cpu": {
            w: round(med_cpu["official"][w] / max(med_cpu["rockgen"][w], 1e-9), 3) for w in med_cpu["rockgen"]
        },
    }


def memory_worker(spec: dict) -> dict:
    """Run in a fresh process: RSS after imports, build one side, 3 training steps, peak memory."""
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    importlib.import_module("rockgen.presets")  # the rockgen side's imports, before the baseline like the official's
    importlib.import_module("experiment")

    with official_imports(Path(spec["official"])):
        importlib.import_module("experiment")
    base = _reset_peak_rss()
    if spec["side"] == "official":
        side = Official(Path(spec["official"]), spec["config"], device)
    else:
        side = Rockgen(spec["config"], device, **spec["rockgen_kw"])
    x = torch.rand(spec["batch"], 3, side.image_size, side.image_size, device=device) * 2 - 1
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if spec["precision"] == "bf16" else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(3):
        with amp:
            side.train_step(x)
    peak = _vm_gb("VmHWM") if base is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    base = base if base is not None else 0.0
    out = {"rss_after_imports_gb": round(base, 3), "peak_rss_gb": round(peak, 3), "train_rss_gb": round(peak - base, 3)}
    if device.type == "cuda":
        out["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


def measure_memory(args, device, precision: str, config: str, rockgen_kw: dict) -> dict:
    out = {}
    for side in ("official", "rockgen"):
        spec = {
            "side": side,
            "official": str(Path(args.official).resolve()),
            "config": config,
            "device": str(device),
            "threads": args.threads,
            "batch": args.batch,
            "precision": precision,
            "rockgen_kw": rockgen_kw,
        }
        cmd = [sys.executable, str(Path(__file__).resolve()), json.dumps(spec)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0:
            raise SystemExit(f"memory worker ({side}) failed:\n{proc.stderr[-3000:]}")
        out[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    key = "peak_cuda_gb" if device.type == "cuda" else "train_rss_gb"
    out["rockgen_over_official"] = round(out["rockgen"][key] / max(out["official"][key], 1e-3), 3)
    out["measure"] = key
    return out


def _one_off(row: dict) -> str:
    """The compile column: torch.compile's warm-up, or the seconds of one trace + freeze."""
    if row.get("compile_s") is not None:
        return str(row["compile_s"])
    if row.get("trace_s") is not None and row.get("traces"):
        return f"{row['trace_s'] / row['traces']:.1f}"
    return "-"


def format_rows(rows: list[dict]) -> str:
    """The ratio table: wall-clock ratios, then the same from CPU time (``cpu x``) where recorded."""
    lines = [
        f"{'config':<10}{'precision':<11}{'rockgen':<22}"
        + "".join(f"{w + ' x':>10}" for w in WHATS)
        + "".join(f"{w + ' cpu x':>13}" for w in WHATS)
        + f"{'mem ratio':>11}{'compile s':>11}"
    ]
    for r in rows:
        opts = r["rockgen_options"]
        opts = {**opts, "nchw": opts.get("channels_last") is False}  # channels_last=None: the preset's (on)
        opts = ",".join(k if v is True else f"{k}={v}" for k, v in opts.items() if v not in (None, False, "none"))
        mem = r.get("memory", {}).get("rockgen_over_official")
        cells = "".join(f"{r['ratio'][w]:>10.2f}" if w in r["ratio"] else f"{'-':>10}" for w in WHATS)
        cpu = r.get("ratio_cpu", {})
        cells += "".join(f"{cpu[w]:>13.2f}" if w in cpu else f"{'-':>13}" for w in WHATS)
        lines.append(
            f"{r['config']:<10}{r['precision']:<11}{opts or 'default':<22}{cells}"
            f"{mem if mem is not None else '-':>11}{_one_off(r):>11}"
        )
    lines.append(
        "x = official time / rockgen time (> 1: rockgen faster), medians of wall-clock times; cpu x: of the "
        "process's CPU times; mem ratio = rockgen / official peak; compile s: torch.compile warm-up or one "
        "trace + freeze (inference_compile=freeze: once per input shape and weights)"
    )
    return "\n".join(lines)


if __name__ == "__main__":  # memory worker
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(memory_worker(json.loads(sys.argv[1]))))
