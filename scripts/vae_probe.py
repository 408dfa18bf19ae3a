"""Cheap diagnosis of the demo VAE: a bare training loop (no Lightning) that prints whether the loss falls below
the mean-colour level, with the held-out PSNR of decode(μ) beside two reference levels.

The held-out tiles are the demo's validation split (64 tiles, 32 px); reference levels on them: every tile
replaced by its mean colour, and by its 4×4 average pooling upsampled bilinearly. ``--overfit 8`` trains on one
fixed batch of 8 tiles and scores on those (a healthy autoencoder passes 25 dB in a few hundred steps).

    OMP_NUM_THREADS=1 python scripts/vae_probe.py --steps 150                          # the demo_vae network
    OMP_NUM_THREADS=1 python scripts/vae_probe.py --steps 150 --net bottleneck=tokens  # any ViTAEConfig field
    OMP_NUM_THREADS=1 python scripts/vae_probe.py --steps 300 --overfit 8 --beta 0
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rockgen.data import TileDataModule
from rockgen.models.vit_ae import ViTAutoencoder, kl_to_standard_normal, reparameterize
from rockgen.presets.recipes import demo_vae

# where run.py caches the demo tiles (rockgen/configs/paths: ${ROCKGEN_CACHE_DIR:-$HOME/.cache/rockgen}/demo)
DEMO_DIR = Path(os.environ.get("ROCKGEN_CACHE_DIR", Path.home() / ".cache" / "rockgen")) / "demo"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the PSNR (dB) of [-1, 1] images a, b (B, 3, S, S); a is clamped to [-1, 1]."""
    mse = ((a.clamp(-1, 1) - b) / 2).square().flatten(1).mean(1)
    return float((-10 * mse.log10()).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=None, help="default: the demo_vae preset's")
    ap.add_argument("--weight-decay", type=float, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--beta", type=float, default=None)
    ap.add_argument("--overfit", type=int, default=0, help="train on one fixed batch of this many tiles")
    ap.add_argument("--net", nargs="*", default=[], help="ViTAEConfig overrides: field=value")
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    preset = demo_vae()
    model, optim = preset.model, preset.model.optim
    over = {
        k: ast.literal_eval(v) if v[:1].isdigit() or v[:1] in "[(-" else v
        for k, v in (a.split("=", 1) for a in args.net)
    }
    cfg = dataclasses.replace(model.net, **over)
    lr = args.lr if args.lr is not None else optim.lr
    wd = args.weight_decay if args.weight_decay is not None else optim.weight_decay
    warmup = args.warmup if args.warmup is not None else optim.warmup_steps
    beta = args.beta if args.beta is not None else model.beta
    print(f"net {cfg}\nlr {lr} weight_decay {wd} warmup {warmup} beta {beta}")

    dm = TileDataModule(
        image_size=cfg.image_size,
        batch_size=preset.budget.batch_size,
        num_workers=0,
        persistent_workers=False,
        demo_dir=str(DEMO_DIR),
    )
    dm.prepare_data()
    dm.setup("fit")
    val = torch.cat([b["img"] for b in dm.val_dataloader()])
    batches = iter(())
    fixed = next(iter(dm.train_dataloader()))["img"][: args.overfit] if args.overfit else None
    ref = fixed if fixed is not None else val
    blur = F.interpolate(F.avg_pool2d(ref, 4), scale_factor=4, mode="bilinear")
    print(
        f"reference: mean colour {psnr(ref.mean((2, 3), keepdim=True).expand_as(ref), ref):.2f} dB, "
        f"4x4 average {psnr(blur, ref):.2f} dB on {len(ref)} tiles"
    )

    net = ViTAutoencoder(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    t0 = time.time()
    for step in range(1, args.steps + 1):
        if fixed is not None:
            x = fixed
        else:
            x = next(batches, None)
            if x is None:
                batches = (b["img"] for b in dm.train_dataloader())
                x = next(batches)
        mu, logvar = net.encode(x)
        x_hat = net.decode(reparameterize(mu, logvar) if beta > 0 else mu)
        mse, kl = F.mse_loss(x_hat, x), kl_to_standard_normal(mu, logvar).mean()
        loss = mse + beta * kl / x[0].numel()
        opt.zero_grad()
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
        opt.step()
        sched.step()
        if step % args.every == 0 or step == 1:
            net.eval()
            with torch.no_grad():
                held = psnr(net.decode(net.encode(ref)[0]), ref)
            net.train()
            print(
                f"step {step:4d}  mse {mse.item():.4f}  kl {kl.item():7.1f} nats"
                f"  beta*kl/D {beta * kl.item() / x[0].numel():.1e}"
                f"  |grad| {grad.item():.3f}  PSNR(z=mu) {held:5.2f} dB  {time.time() - t0:4.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
