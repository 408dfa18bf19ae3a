"""The Lightning training loop (run.py's Trainer, callbacks, loggers, data loader) vs bench.py's bare step.

Both drive the same LitModel in one process: ``--steps`` bare steps (``bench.lightning_train_step``: training_step,
backward, clip 1.0, AdamW, EMA), then ``trainer.fit`` for ``--steps`` steps with the Trainer ``run.py`` builds
(``rockgen.tasks.build.build_trainer``) on the demo tiles at the config's size, then the bare steps again. Per-step
times are the intervals between consecutive ``on_train_batch_start`` calls (so they include loading the batch,
callbacks, logging and the optimizer step); the first two steps of each part are dropped. Prints the ratio
bare / Lightning of the median CPU time (this process) and of the median wall time.

    python scripts/bench_loop.py --config small --steps 12 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the small config of bench_official (ch 32, decoder mult 1,2,2,2, encoder 1,2,2,2,2 at 64 px) as overrides
CONFIGS = {
    "small": [
        "template=rock64",
        "model.unet.model_channels=32",
        "model.unet.channel_mult=[1,2,2,2]",
        "model.encoder.model_channels=32",
        "model.encoder.channel_mult=[1,2,2,2,2]",
    ],
    "rock64": ["template=rock64"],
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small", choices=sorted(CONFIGS))
    p.add_argument("--steps", type=int, default=12, help="steps of each part (bare, Lightning, bare)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=2, help="data.num_workers of the Lightning part")
    p.add_argument("--out", default=None, help="JSON path (default bench_results/loop_<config>_<time>.json)")
    args = p.parse_args(argv)
    if args.steps < 3:
        p.error("--steps must be >= 3 (the first two of each part are dropped)")

    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench

    from rockgen.presets import register
    from rockgen.tasks.build import build_trainer

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_loop_"))
    register()
    overrides = [
        *CONFIGS[args.config],
        f"paths.run_dir={tmp / 'run'}",
        f"paths.cache_dir={tmp / 'cache'}",
        "logger=csv",
        f"data.num_workers={args.num_workers}",
        "data.demo_num_per_class=16",
        "data.demo_size=64",
        f"data.batch_size={args.batch}",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        f"trainer.max_steps={args.steps}",
        "trainer.val_check_interval=100000",
        "trainer.limit_val_batches=0",
        "callbacks.checkpoint.every_n_train_steps=100000",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "rockgen" / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=overrides)
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")

    stamps: list[tuple[float, float]] = []

    class StepClock(pl.Callback):
        def on_train_batch_start(self, *_args) -> None:
            stamps.append((time.process_time(), time.perf_counter()))

        def on_train_end(self, *_args) -> None:
            stamps.append((time.process_time(), time.perf_counter()))

    def intervals(marks):
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:], strict=False)][2:]

    def bare() -> list[tuple[float, float]]:
        x = torch.rand(args.batch, 3, model.image_size, model.image_size) * 2 - 1
        step, _ = bench.lightning_train_step(model, {"img": x}, contextlib.nullcontext, clip=1.0)
        model.train()
        marks = []
        for _ in range(args.steps):
            marks.append((time.process_time(), time.perf_counter()))
            step()
        marks.append((time.process_time(), time.perf_counter()))
        return intervals(marks)

    parts = {"bare": bare()}
    trainer = build_trainer(cfg, tmp / "run", enable_progress_bar=True)
    trainer.callbacks.append(StepClock())
    trainer.fit(model, datamodule=datamodule)
    parts["lightning"] = intervals(stamps)
    parts["bare"] += bare()
    med = {k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for k, v in parts.items()}
    result = {
        "config": args.config,
        "batch": args.batch,
        "threads": args.threads,
        "num_workers": args.num_workers,
        "steps": {k: [[round(c, 4), round(w, 4)] for c, w in v] for k, v in parts.items()},
        "median_cpu_s": {k: round(v[0], 4) for k, v in med.items()},
        "median_wall_s": {k: round(v[1], 4) for k, v in med.items()},
        "lightning_speed_cpu": round(med["bare"][0] / med["lightning"][0], 3),
        "lightning_speed_wall": round(med["bare"][1] / med["lightning"][1], 3),
    }
    print(
        f"{args.config}, batch {args.batch}, {args.threads} thread(s): Lightning loop / bare loop speed "
        f"{result['lightning_speed_cpu']:.3f} (CPU time), {result['lightning_speed_wall']:.3f} (wall)"
    )
    out = Path(args.out or f"bench_results/loop_{args.config}_{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
