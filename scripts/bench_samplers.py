"""Quality per step of the image samplers: distance of an N-step sample to the DDIM-200 sample from the same
x_T and z_sem (the issue's metric), and to a 1000-step DDIM sample (every training step: x_T at t = 999, as the
fast samplers' default spacing has it), on a trained DiffAE checkpoint (z_sem encoded from held-out demo
tiles, so no latent stage is needed). DDIM runs on its kept steps; each of ``--solvers`` (DPM-Solver++(2M,
3M), UniPC) on each ``--spacings`` rule (``rockgen.samplers.spacing``). Writes ``<out>/samplers.json`` and
``<out>/samplers.png`` (one labelled row per render: the references, then each sampler/spacing/steps).

    python scripts/bench_samplers.py CKPT [--out DIR] [--n 8] [--steps 5 10 20 50] [--spacings quadratic logsnr]
                                     [--solvers dpmpp_2m ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rockgen.data.demo import generate_demo_tiles  # noqa: E402
from rockgen.lit.checkpoint import load_checkpoint_module  # noqa: E402
from rockgen.samplers import SAMPLERS, SPACINGS, get_sampler  # noqa: E402
from rockgen.visual import to_uint8  # noqa: E402

KINDS = ("cobbles", "layered", "fractured", "gravel", "granite")


def _rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image RMSE (B,) of images in [0, 1]."""
    return (a - b).square().flatten(1).mean(1).sqrt()


def _strip(rows: list[tuple[str, torch.Tensor]], scale: int) -> Image.Image:
    """One labelled row of images (n, 3, s, s) in [0, 1] per entry, upscaled ``scale``× (nearest)."""
    label_w = 150
    n, s = rows[0][1].shape[0], rows[0][1].shape[-1] * scale
    sheet = Image.new("RGB", (label_w + n * s, len(rows) * s), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, imgs) in enumerate(rows):
        cells = to_uint8(imgs)  # (n, s, s, 3)
        strip = Image.fromarray(np.concatenate(list(cells), axis=1)).resize((n * s, s), Image.NEAREST)
        sheet.paste(strip, (label_w, r * s))
        draw.text((4, r * s + s // 2 - 6), label, fill="black")
    return sheet


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--out", default="logs/bench_samplers")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    ap.add_argument("--ref", type=int, default=200, help="DDIM steps of the issue's reference")
    ap.add_argument("--ref2", type=int, default=1000, help="DDIM steps of the second reference (0: none)")
    ap.add_argument("--spacings", nargs="+", default=["quadratic", "logsnr"], choices=SPACINGS)
    ap.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "dpmpp_3m", "unipc"], choices=sorted(SAMPLERS))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = load_checkpoint_module(args.ckpt).eval()
    s = model.image_size
    tiles = np.concatenate([generate_demo_tiles(k, -(-args.n // len(KINDS)), s, seed=777) for k in KINDS])[: args.n]
    x = torch.from_numpy(tiles).float().permute(0, 3, 1, 2) / 127.5 - 1  # uint8 → [-1, 1]
    z = model.encode(x)
    x_T = torch.randn(args.n, 3, s, s, generator=torch.Generator().manual_seed(1))
    fn, conf = model.decoder_fn(z), model.diffusion_conf

    @torch.no_grad()
    def render(name: str, steps: int, spacing: str | None) -> torch.Tensor:
        kw = {} if spacing is None else {"spacing": spacing}
        out = get_sampler(name)(fn, x_T.to(model.device), model.schedule, steps, clip_x0=conf.clip_x0,
                                prediction=conf.prediction, **kw)  # fmt: skip
        return ((out.float().cpu() + 1) / 2).clamp(0, 1)

    refs = {f"ddim-{args.ref}": render("ddim", args.ref, None)}
    if args.ref2:
        refs[f"ddim-{args.ref2}"] = render("ddim", args.ref2, None)
    ref_names = list(refs)
    configs = [("ddim", None)] + [(m, sp) for sp in args.spacings for m in args.solvers if m != "ddim"]
    rows, table = [(f"ref {k}", v) for k, v in refs.items()], {}
    if args.ref2:
        table["ref_agreement"] = {"rmse": float(_rmse(refs[ref_names[0]], refs[ref_names[1]]).mean())}
    jobs = [(n_steps, name, sp) for n_steps in args.steps for name, sp in configs]
    for n_steps, name, sp in tqdm(jobs, desc="samplers"):
        img = render(name, n_steps, sp)
        key = f"{name}-{n_steps}" if sp is None else f"{name}[{sp}]-{n_steps}"
        rmse = _rmse(img, refs[ref_names[0]])
        entry = {"rmse": float(rmse.mean()), "psnr_db": float((-20 * torch.log10(rmse.clamp_min(1e-8))).mean())}
        for r in ref_names[1:]:
            entry[f"rmse_{r}"] = float(_rmse(img, refs[r]).mean())
        table[key] = entry
        rows.append((key, img))
        tqdm.write(f"{key:24s} " + " ".join(f"{k} {v:.4f}" for k, v in entry.items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _strip(rows, max(1, 64 // s)).save(out / "samplers.png")
    result = {"checkpoint": str(args.ckpt), "reference": ref_names[0], "references": ref_names, "n": args.n}
    result["table"] = table
    (out / "samplers.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out / 'samplers.json'} and {out / 'samplers.png'}")
    return result


if __name__ == "__main__":
    main()
