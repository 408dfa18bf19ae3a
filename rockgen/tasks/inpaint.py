"""``task=inpaint``: fill the masked pixels of a real tile or orthomosaic with a DiffAE decoder.

    python run.py task=inpaint ckpt_path=.../last.ckpt image=photo.png mask=holes.png

``mask``: an image of the same size, nonzero (white) = pixels to fill; nodata holes or a strip to extend
(outpainting: pad the image and mark the pad). Images larger than the model's tile are processed as a
MultiDiffusion canvas (``rockgen.mosaic``) whose windows each take z_sem from their own real pixels (holes
filled with the mean known colour for the encoder). Writes ``inpainted.png`` and ``comparison.png``
(input with the hole in magenta | result) under the run directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from rockgen.data.images import load_rgb
from rockgen.inpaint import check_mask, fill_for_encoding, inpaint_sample
from rockgen.lit.checkpoint import load_checkpoint_module
from rockgen.mosaic import MosaicModel, window_origins
from rockgen.visual import to_uint8


def load_mask(path: str | Path) -> torch.Tensor:
    """(1, 1, H, W) bool, True where the mask image is nonzero in any channel."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"mask not found: {path}")
    arr = np.asarray(Image.open(path).convert("L"))
    return torch.from_numpy(arr > 0)[None, None]


def inpaint_task(cfg: DictConfig) -> dict[str, Any]:
    for key in ("ckpt_path", "image", "mask"):
        if not cfg.get(key):
            raise ValueError(f"task=inpaint needs {key}=...")
    path = Path(cfg.image).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    img = torch.from_numpy(load_rgb(path).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    mask = load_mask(cfg.mask)
    check_mask(mask, img, f"mask {cfg.mask}", f"image {cfg.image}")
    run_dir = Path(cfg.paths.run_dir)
    out = run_dir / "inpainted.png"
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists: choose another run_name or set overwrite=true")
    model = load_checkpoint_module(cfg.ckpt_path).eval()
    if not hasattr(model, "decoder_fn"):
        raise ValueError(f"task=inpaint needs a DiffAE checkpoint; {cfg.ckpt_path} holds a {type(model).__name__}")
    s = model.image_size
    h, w = img.shape[-2:]
    window_origins(h, s, int(cfg.overlap))  # the image must hold at least one tile
    window_origins(w, s, int(cfg.overlap))
    dec = model.ema_model.decoder
    filled = fill_for_encoding(img, mask)
    if (h, w) == (s, s):
        z = model.encode(filled).cpu()
        fn = model.decoder_fn(z)
    else:
        codes: list[torch.Tensor] = []
        mos = MosaicModel(lambda x, t, idx: dec(x, t, cond=torch.cat(codes)[idx.cpu()].to(x.device)), h, w, s,
                          int(cfg.overlap), int(cfg.window_batch))  # fmt: skip
        crops = [filled[:, :, r : r + s, c : c + s] for r, c in mos.origins]
        bs = int(cfg.window_batch)
        codes.extend(model.encode(torch.cat(crops[i : i + bs])).cpu() for i in range(0, len(crops), bs))
        fn = mos
    gen = torch.Generator().manual_seed(int(cfg.seed))
    d = model.diffusion_conf
    x0 = inpaint_sample(
        fn, img.to(model.device), mask.to(model.device), model.schedule, int(cfg.T), resample=int(cfg.resample),
        clip_x0=d.clip_x0, prediction=d.prediction, generator=gen, progress=True,
    )  # fmt: skip
    result = to_uint8(((x0.float().cpu() + 1) / 2).clamp(0, 1))[0]
    run_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result).save(out)
    shown = to_uint8(((img + 1) / 2).clamp(0, 1))[0].copy()
    shown[mask[0, 0].numpy()] = (255, 0, 255)
    comp = np.concatenate([shown, np.full((h, 4, 3), 255, np.uint8), result], axis=1)
    scale = max(1, 256 // max(h, 1))
    Image.fromarray(comp).resize((comp.shape[1] * scale, comp.shape[0] * scale), Image.NEAREST).save(
        run_dir / "comparison.png"
    )
    info = {"image": str(path), "mask": str(cfg.mask), "ckpt": str(cfg.ckpt_path), "T": int(cfg.T),
            "resample": int(cfg.resample), "filled_pixels": int(mask.sum()), "file": str(out)}  # fmt: skip
    (run_dir / "inpaint.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"Wrote {out} and {run_dir / 'comparison.png'}", flush=True)
    return {"run_dir": run_dir, "inpainted": out, "image": result}
