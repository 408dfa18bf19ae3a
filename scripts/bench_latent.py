#!/usr/bin/env python
"""Benchmark of the latent DDIM (stage 2): sampling codes/s and training codes/s, for the official-size latent
MLP (512-d, 10 x 2048, 54.1 M), the demo's (512-d, 4 x 1024) and the earlier demo's (128-d, 4 x 256).

    sample  LitModel.sample_latents' computation: ``ddim_sample`` of the EMA latent MLP from N(0, I) noise with
            T_latent steps, in chunks of ``--chunk`` codes (one chunk = one batch through the network). Rows
            with batch 8 reproduce how the official code was measured (18 codes/s here: launch-bound); rows
            with large chunks show what batching gives. "shared t" is rockgen's shortcut (one t for the whole
            batch: the time MLP and each layer's scale run on one row); "per-row t" turns it off.
    train   one training step of the latent stage at ``--train-batch``: diffusion loss of the normalised codes
            (as rockgen.methods.diffae_stages.DiffAELatentDDIM), backward, AdamW step, EMA update -- what Lightning
            runs per step.

Every row: one warm-up call, then ``--iters`` timed calls; codes/s = codes / median call time. The time for
``--codes`` codes is extrapolated linearly from the chunk's time when a chunk is smaller than ``--codes``.
Output: a table on stdout, JSON in ``--out`` (default ``bench_results/latent_<timestamp>.json``).

    python scripts/bench_latent.py                               # both nets, fp32 and bf16 (about 3 min)
    python scripts/bench_latent.py --nets demo --codes 10000 --iters 3
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from rockgen.config import LatentConf
from rockgen.diffusion import Schedule, diffusion_loss
from rockgen.ema import ema_update_module_
from rockgen.lit.common import build_optimizer
from rockgen.models import LatentMLPConfig, MLPSkipNet, latent_mlp
from rockgen.samplers import ddim_sample

NETS = {
    "official": {"num_channels": 512},  # LatentMLPConfig defaults = official latent_mlp_2048_norm_10layers
    "demo": {"num_channels": 512, "hidden_channels": 1024, "num_layers": 4},  # rockgen.presets.recipes.demo_latent
    "demo128": {"num_channels": 128, "hidden_channels": 256, "num_layers": 4},  # the demo's until 2026-12-03
}
OFFICIAL_SAMPLE_CODES_S = 18.0  # official latent net, batch 8, T_latent=20, 2 threads (issue #3)
TRAIN_TARGET_CODES_S = 400.0  # issue #3: latent training at batch 256
SAMPLE_TARGET_S = 1.0  # issue #3: 10,000 codes with T_latent=20


def _timed(fn, iters: int) -> list[float]:
    fn()  # warm-up (allocator, oneDNN primitive cache)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def sample_row(net_name: str, precision: str, chunk: int, shared_t: bool, args, conf: LatentConf) -> dict:
    torch.manual_seed(0)
    net = MLPSkipNet(LatentMLPConfig(**NETS[net_name])).eval().requires_grad_(False)
    schedule = Schedule.from_config(
        conf.diffusion.schedule, conf.diffusion.num_timesteps, const=conf.diffusion.beta_const
    )
    d = net.cfg.num_channels
    n = min(chunk, args.codes)
    noise = torch.randn(n, d)

    def call():
        with _autocast(precision):
            ddim_sample(net, noise, schedule, args.T, clip_x0=False, prediction=conf.diffusion.prediction)

    latent_mlp.SHARE_TIMESTEP = shared_t
    try:
        times = _timed(call, args.iters)
    finally:
        latent_mlp.SHARE_TIMESTEP = True
    per_code = statistics.median(times) / n
    return {
        "what": "sample",
        "net": net_name,
        "precision": precision,
        "batch": n,
        "mode": "shared t" if shared_t else "per-row t",
        "times_s": times,
        "codes_s": 1.0 / per_code,
        f"seconds_for_{args.codes}": per_code * args.codes,
        "extrapolated": n < args.codes,
    }


def train_row(net_name: str, precision: str, args, conf: LatentConf) -> dict:
    torch.manual_seed(0)
    net = MLPSkipNet(LatentMLPConfig(**NETS[net_name])).train()
    ema = copy.deepcopy(net).requires_grad_(False)
    schedule = Schedule.from_config(
        conf.diffusion.schedule, conf.diffusion.num_timesteps, const=conf.diffusion.beta_const
    )
    opt = build_optimizer(net.parameters(), conf.optim)["optimizer"]
    z = torch.randn(args.train_batch, net.cfg.num_channels)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(precision):
            loss, *_ = diffusion_loss(conf.diffusion, schedule, net, z)
        loss.mean().backward()
        opt.step()
        ema_update_module_(ema, net, conf.ema.decay)

    times = _timed(step, args.iters)
    return {
        "what": "train",
        "net": net_name,
        "precision": precision,
        "batch": args.train_batch,
        "mode": "",
        "times_s": times,
        "codes_s": args.train_batch / statistics.median(times),
    }


def format_table(rows: list[dict], codes: int) -> str:
    lines = [
        f"{'what':7} {'net':9} {'prec':5} {'batch':>6} {'mode':10} {'codes/s':>11} "
        f"{'s/' + str(codes) + ' codes':>14} {'vs target':>10}"
    ]
    for r in rows:
        if r["what"] == "sample":
            secs = r[f"seconds_for_{codes}"]
            s = f"{secs:13.2f}{'*' if r['extrapolated'] else ' '}"
            ratio = f"{SAMPLE_TARGET_S / secs:9.2f}x"
            rel = f"  ({r['codes_s'] / OFFICIAL_SAMPLE_CODES_S:.1f}x official)" if r["net"] == "official" else ""
        else:
            s, ratio = f"{'':14}", f"{r['codes_s'] / TRAIN_TARGET_CODES_S:9.2f}x"
            rel = ""
        lines.append(
            f"{r['what']:7} {r['net']:9} {r['precision']:5} {r['batch']:6d} {r['mode']:10} "
            f"{r['codes_s']:11.1f} {s} {ratio}{rel}"
        )
    lines.append(
        f"targets (issue #3): sample {codes} codes at T_latent=20 in < {SAMPLE_TARGET_S:.0f} s; train "
        f">= {TRAIN_TARGET_CODES_S:.0f} codes/s at batch 256. 'vs target' > 1 meets it. "
        f"official: {OFFICIAL_SAMPLE_CODES_S:.0f} codes/s sampling at batch 8. "
        "* = extrapolated from one chunk"
    )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default="official,demo", help=f"comma list of {','.join(NETS)}")
    p.add_argument("--precision", default="fp32,bf16", help="comma list of fp32,bf16 (bf16 = CPU autocast)")
    p.add_argument("--codes", type=int, default=10_000, help="codes to sample (the issue's 10,000)")
    p.add_argument(
        "--chunks",
        default="8,10000",
        help="sampling batch sizes; chunks above --codes are capped at it. The official net is "
        "measured on one chunk of at most --official-chunk codes and extrapolated",
    )
    p.add_argument(
        "--official-chunk",
        type=int,
        default=1024,
        help="largest chunk for the official-size net (10,000 codes x 20 steps is ~22 TFLOP)",
    )
    p.add_argument("--T", type=int, default=20, help="latent DDIM steps")
    p.add_argument("--train-batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=3, help="timed calls per row (after one warm-up call)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-per-row", action="store_true", help="skip the rows without the shared-t shortcut")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    for name in args.nets.split(","):
        if name not in NETS:
            p.error(f"--nets: unknown net {name!r}; choose from {', '.join(NETS)}")
    for prec in args.precision.split(","):
        if prec not in ("fp32", "bf16"):
            p.error(f"--precision: unknown precision {prec!r}; choose fp32 or bf16")
    if args.codes < 1 or args.iters < 1 or args.T < 1 or args.train_batch < 1:
        p.error("--codes, --iters, --T and --train-batch must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    conf = LatentConf()
    rows = []
    for net_name in args.nets.split(","):
        for prec in args.precision.split(","):
            cap = args.official_chunk if net_name == "official" else args.codes
            for chunk in sorted({min(int(c), cap, args.codes) for c in args.chunks.split(",")}):
                for shared in (True, False) if not args.no_per_row and chunk > 8 else (True,):
                    print(f"== sample {net_name} {prec} batch {chunk} shared_t={shared}", file=sys.stderr, flush=True)
                    rows.append(sample_row(net_name, prec, chunk, shared, args, conf))
            print(f"== train {net_name} {prec} batch {args.train_batch}", file=sys.stderr, flush=True)
            rows.append(train_row(net_name, prec, args, conf))
    table = format_table(rows, args.codes)
    print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("bench_results") / f"latent_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "created": stamp,
        "args": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "table": table,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"JSON: {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
