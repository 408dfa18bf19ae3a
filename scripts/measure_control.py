"""Measured control of a class-conditional DiffAE: per-class accuracy and diversity vs classifier-free guidance w.

The classifier is the one ``task=manipulate`` fits (softmax regression on z-normalised real z_sem, held out by
source image). For each guidance w and class c it draws N samples with ``LitModel.sample(cls=c, guidance=w)``
and reports:

* ``acc_latent``: the classifier's accuracy on the sampled z_sem themselves (what the latent DDIM produced);
* ``acc_render``: its accuracy on the z_sem of the *rendered* images, re-encoded by the EMA encoder (the whole
  chain: latent DDIM → decoder → image → encoder);
* ``diversity``: mean pairwise distance of the re-encoded, z-normalised codes of one class, divided by √D,
  beside the same figure for the real codes of that class (1.0·√2 would be two independent unit Gaussians).

Usage:
    python scripts/measure_control.py --ckpt logs/train/demo-latent/checkpoints/last.ckpt \\
        --latents logs/infer_latents/demo/latents.pt --out logs/control/demo [--per-class 32] [--w 0 1 2 4]
Writes ``control.md`` (the table), ``control.json`` and ``grid_w<w>.png`` (one row per class, 96-px tiles).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rockgen.latent_ops import code_labels, fit_linear_classifier  # noqa: E402
from rockgen.latents import encoder_fingerprint, load_latents  # noqa: E402
from rockgen.lit.checkpoint import load_checkpoint_module  # noqa: E402
from rockgen.visual import save_grid, upscale_to  # noqa: E402


def mean_pairwise_distance(zn: torch.Tensor) -> float:
    """Mean L2 distance over all pairs i < j of rows of zn (N, D), divided by √D."""
    if zn.shape[0] < 2:
        return float("nan")
    d = torch.cdist(zn.double(), zn.double())
    n = zn.shape[0]
    return float(d.sum() / (n * (n - 1)) / zn.shape[1] ** 0.5)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True, help="class-conditional latent-stage DiffAE checkpoint")
    ap.add_argument("--latents", required=True, help="latents file of its autoencoder (task=infer_latents)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--labels-csv", default=None)
    ap.add_argument("--per-class", type=int, default=32)
    ap.add_argument("--w", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    ap.add_argument("--T", type=int, default=20, help="image DDIM steps")
    ap.add_argument("--T-latent", type=int, default=20)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint_module(args.ckpt).eval()
    if not getattr(model, "classes", None):
        raise SystemExit(f"--ckpt {args.ckpt}: the latent DDIM is unconditional (train with model.latent.classes=auto)")
    lat = load_latents(args.latents, expect_fingerprint=encoder_fingerprint(model.ema_model.encoder))
    labels = code_labels(lat, args.labels_csv)
    clf = fit_linear_classifier(lat.normalise(lat.z), labels, holdout=args.holdout, seed=args.seed, groups=lat.paths)
    print(f"classifier: classes {clf.classes}, held-out accuracy {clf.heldout_accuracy:.3f}", flush=True)
    real_div = {
        c: mean_pairwise_distance(lat.normalise(lat.z[[i for i, lab in enumerate(labels) if lab == c]]))
        for c in model.classes
    }

    rows, grids = [], {}
    jobs = [(w, c) for w in args.w for c in model.classes]
    for w, c in tqdm(jobs, desc="guidance x class"):
        z_parts, img_parts = [], []
        for b, start in enumerate(range(0, args.per_class, args.batch_size)):
            n = min(args.batch_size, args.per_class - start)
            gen = torch.Generator().manual_seed(args.seed + 1000 * b)  # the same noise for every (w, class)
            z = model.sample_latents(n, "cpu", args.T_latent, generator=gen, cls=c, guidance=w)
            x_T = torch.randn(n, 3, model.image_size, model.image_size, generator=gen)
            img_parts.append(model.render(x_T, z, T=args.T))
            z_parts.append(z)
        z, img = torch.cat(z_parts), torch.cat(img_parts)
        z_re = model.encode(img * 2 - 1)
        acc_latent = sum(p == c for p in clf.predict(lat.normalise(z))) / len(z)
        acc_render = sum(p == c for p in clf.predict(lat.normalise(z_re))) / len(z)
        rows.append(
            {
                "w": w,
                "class": c,
                "acc_latent": acc_latent,
                "acc_render": acc_render,
                "diversity": mean_pairwise_distance(lat.normalise(z_re)),
                "diversity_real": real_div[c],
            }
        )
        grids.setdefault(w, []).append(img[:8])
    for w, parts in grids.items():
        save_grid(upscale_to(torch.cat(parts), 96), out / f"grid_w{w:g}.png", nrow=min(8, args.per_class))

    lines = [
        f"Classifier on real z_sem (held out by source): accuracy {clf.heldout_accuracy:.3f} "
        f"on {sum(clf.heldout_counts.values())} held-out codes; {args.per_class} samples per class and w, "
        f"DDIM-{args.T} images, latent DDIM-{args.T_latent}.",
        "",
        "| w | mean acc (sampled z) | mean acc (re-encoded renders) | diversity (renders) | "
        + " | ".join(f"{c} acc" for c in model.classes)
        + " |",
        "|---" * (4 + len(model.classes)) + "|",
    ]
    for w in args.w:
        rs = [r for r in rows if r["w"] == w]
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("acc_latent", "acc_render", "diversity")}
        per = " | ".join(f"{r['acc_render']:.2f}" for r in rs)
        lines.append(
            f"| {w:g} | {mean['acc_latent']:.3f} | {mean['acc_render']:.3f} | {mean['diversity']:.3f} | {per} |"
        )
    real = sum(real_div.values()) / len(real_div)
    lines += ["", f"Diversity of the real codes (same measure, mean over classes): {real:.3f}."]
    (out / "control.md").write_text("\n".join(lines) + "\n")
    report = {"classifier_heldout_accuracy": clf.heldout_accuracy, "classes": model.classes, "rows": rows}
    (out / "control.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines), f"\nWrote {out / 'control.md'}, control.json and grid_w*.png", sep="\n", flush=True)
    return report


if __name__ == "__main__":
    main()
