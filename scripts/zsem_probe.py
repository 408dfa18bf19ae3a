"""How much of a held-out tile does z_sem carry? Figures of the README's z_sem candidate table (issue #13, part 4).

On the first 32 (what validation scores) and 64 held-out demo tiles (``template=demo``), with the EMA networks:
  one-step      x̂₀ at t = 999 from x_t of the true x₀ and z_sem: ≈ E[x₀ | z_sem], what z_sem determines
  z_sem only    DDIM-20 render from a random x_T (seed 0): a sample of p(x₀ | z_sem), ≈ twice the error
  swapped       the same render with another tile's z_sem: how much the render depends on z_sem at all
  mean colour   each tile replaced by its mean colour: the floor a code must beat
and the spread of z_sem (per-dimension std over tiles / rms): near 0 = a constant offset, 1 = all signal.

    python scripts/zsem_probe.py logs/train/<run>/checkpoints/last.ckpt [extra overrides of the data config]
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir

from rockgen.diffusion import to_eps_and_x0
from rockgen.lit.diffae import LitModel
from rockgen.presets import register
from rockgen.samplers import ddim_sample

ROOT = Path(__file__).resolve().parents[1]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of a, b (B, 3, H, W) in [0, 1]."""
    return (10 * torch.log10(1 / (a - b).square().flatten(1).mean(1))).mean().item()


def held_out_tiles(overrides: list[str], n: int = 64) -> torch.Tensor:
    """The first n validation tiles of the demo data (B, 3, H, W) in [-1, 1]."""
    register()
    with initialize_config_dir(config_dir=str(ROOT / "rockgen" / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=["data.num_workers=0", f"data.val_max_items={n}", *overrides])
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return torch.cat([b["img"] for b in dm.val_dataloader()])[:n]


@torch.no_grad()
def main(ckpt: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    m = LitModel.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    xs = held_out_tiles(overrides)
    target = (xs + 1) / 2
    d = m.diffusion_conf
    kw = dict(clip_x0=d.clip_x0, prediction=d.prediction)
    z = m.encode(xs)
    spread = (z.std(0).mean() / z.square().mean().sqrt()).item()
    noise = torch.randn(xs.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((xs.shape[0],), 999)
    ab = m.schedule.abar(t, xs)
    x_t = ab.sqrt() * xs + (1 - ab).sqrt() * noise
    x0 = to_eps_and_x0(d.prediction, m.decoder_fn(z)(x_t, t).float(), ab, x_t)[1].clamp(-1, 1)

    def render(code: torch.Tensor) -> torch.Tensor:
        return ((ddim_sample(m.decoder_fn(code), noise, m.schedule, 20, **kw).float() + 1) / 2).clamp(0, 1)

    rows = {
        "one-step x0_hat(t=999 | z_sem)": (x0 + 1) / 2,
        "z_sem only (random x_T, DDIM-20)": render(z),
        "  with another tile's z_sem": render(z.roll(1, 0)),
        "per-tile mean colour": target.mean((2, 3), keepdim=True).expand_as(target),
    }
    print(f"z_sem spread {spread:.3f}; PSNR dB on the first 32 (= validation) | all {xs.shape[0]} held-out tiles")
    for name, rec in rows.items():
        print(f"{name:34s} {psnr(rec[:32], target[:32]):6.2f} | {psnr(rec, target):6.2f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
