"""Quality per step of the image samplers: distance of an N-step sample to the DDIM-200 sample from the same
x_T and z_sem, on a trained DiffAE checkpoint (z_sem encoded from held-out demo tiles, so no latent stage is
needed). Writes ``<out>/samplers.json`` and ``<out>/samplers.png`` (rows: reference, then each sampler/steps).

    python scripts/bench_samplers.py CKPT [--out DIR] [--n 8] [--steps 5 10 20 50]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rockgen.data.demo import generate_demo_tiles  # noqa: E402
from rockgen.lit.checkpoint import load_checkpoint_module  # noqa: E402
from rockgen.visual import to_uint8  # noqa: E402

SAMPLERS = ("ddim", "dpmpp_2m", "unipc")
KINDS = ("cobbles", "layered", "fractured", "gravel", "granite")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--out", default="logs/bench_samplers")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--ref", type=int, default=200)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = load_checkpoint_module(args.ckpt).eval()
    s = model.image_size
    tiles = np.concatenate([generate_demo_tiles(k, -(-args.n // len(KINDS)), s, seed=777) for k in KINDS])[: args.n]
    x = torch.from_numpy(tiles).float().permute(0, 3, 1, 2) / 127.5 - 1  # uint8 → [-1, 1]
    z = model.encode(x)
    x_T = torch.randn(args.n, 3, s, s, generator=torch.Generator().manual_seed(1))
    ref = model.render(x_T, z, T=args.ref, sampler="ddim")
    rows, table = [ref], {}
    for name in SAMPLERS:
        for n_steps in args.steps:
            img = model.render(x_T, z, T=n_steps, sampler=name)
            rmse = (img - ref).square().flatten(1).mean(1).sqrt()
            table[f"{name}-{n_steps}"] = {
                "rmse": float(rmse.mean()),
                "psnr_db": float((-20 * torch.log10(rmse.clamp_min(1e-8))).mean()),
            }
            rows.append(img)
            print(f"{name:9s} {n_steps:3d} steps: RMSE {table[f'{name}-{n_steps}']['rmse']:.4f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = torch.stack(rows)  # (rows, n, 3, s, s)
    scale = max(1, 64 // s)
    cells = to_uint8(grid.flatten(0, 1)).reshape(len(rows), args.n, s, s, 3)
    strip = np.concatenate([np.concatenate(list(r), axis=1) for r in cells], axis=0)
    Image.fromarray(strip).resize((strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST).save(
        out / "samplers.png"
    )
    result = {"checkpoint": str(args.ckpt), "reference": f"ddim-{args.ref}", "n": args.n, "table": table}
    (out / "samplers.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out / 'samplers.json'} and {out / 'samplers.png'}")
    return result


if __name__ == "__main__":
    main()
