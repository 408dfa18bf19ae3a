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

import torch
from omegaconf import DictConfig
from PIL import Image

from rockgen.data.images import load_rgb
from rockgen.inpaint import check_mask, comparison_image, inpaint_image, load_mask
from rockgen.lit.checkpoint import load_checkpoint_module
from rockgen.mosaic import window_origins
from rockgen.visual import to_uint8


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
    x0 = inpaint_image(
        model, img, mask, int(cfg.T), resample=int(cfg.resample), seed=int(cfg.seed), overlap=int(cfg.overlap),
        window_batch=int(cfg.window_batch), progress=True,
    )  # fmt: skip
    result = to_uint8(((x0.float().cpu() + 1) / 2).clamp(0, 1))[0]
    run_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result).save(out)
    comp = comparison_image(to_uint8(((img + 1) / 2).clamp(0, 1))[0], mask, result)
    scale = max(1, 256 // max(h, 1))
    Image.fromarray(comp).resize((comp.shape[1] * scale, comp.shape[0] * scale), Image.NEAREST).save(
        run_dir / "comparison.png"
    )
    info = {"image": str(path), "mask": str(cfg.mask), "ckpt": str(cfg.ckpt_path), "T": int(cfg.T),
            "resample": int(cfg.resample), "filled_pixels": int(mask.sum()), "file": str(out)}  # fmt: skip
    (run_dir / "inpaint.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"Wrote {out} and {run_dir / 'comparison.png'}", flush=True)
    return {"run_dir": run_dir, "inpainted": out, "image": result}
