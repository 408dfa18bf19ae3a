"""Inpainting / outpainting by known-region replacement (RePaint-style, Lugmayr et al. 2022, eq. 8).

At every DDIM step t → s the unknown pixels follow the sampler while the known pixels are replaced by a fresh
forward-process sample of the real image, x_s[known] = √ᾱ_s x_known + √(1−ᾱ_s) ε, so the network always sees a
consistent noisy picture and its unknown region is generated to agree with the known one. ``resample`` > 1
adds RePaint's back-and-forth: after a step, go back to t with fresh noise (q(x_t | x_s)) and redo the step,
which harmonises the two regions further at the cost of ``resample`` network calls per step. The last step
writes the known pixels exactly.

Works on a tile (model_fn = the decoder) or on any canvas through ``rockgen.mosaic.MosaicModel``;
:func:`inpaint_image` does either with a DiffAE (``task=inpaint`` and the explorer's Inpaint tab).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from rockgen.diffusion.schedules import Schedule
from rockgen.mosaic import MosaicModel, window_origins
from rockgen.samplers.ddim import ModelFn, _predict, ddim_descent, ddim_step


def check_mask(mask: torch.Tensor, image: torch.Tensor, mask_name: str = "mask", image_name: str = "image") -> None:
    """mask (1, 1, H, W) bool (True = fill) must match the image (1, C, H, W) and hold both kinds of pixel."""
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"{mask_name} is {mask.shape[-1]}x{mask.shape[-2]} px but {image_name} is "
            f"{image.shape[-1]}x{image.shape[-2]} px: they must be the same size"
        )
    n = int(mask.sum())
    if n == 0:
        raise ValueError(f"{mask_name} marks no pixel to fill (all known): nothing to inpaint")
    if n == mask.numel():
        raise ValueError(
            f"{mask_name} marks every pixel to fill (all unknown): nothing to condition on (use task=generate)"
        )


def load_mask(path: str | Path) -> torch.Tensor:
    """(1, 1, H, W) bool, True where the mask image is nonzero in any channel."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"mask {path.name}: not a readable image ({err})") from None
    return torch.from_numpy(arr > 0)[None, None]


def fill_for_encoding(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image with holes filled by the mean colour of its known pixels: the encoder's input for z_sem.

    image (B, C, H, W), mask (B, 1, H, W) bool; z_sem then describes the surrounding real pixels only.
    """
    known = (~mask).to(image.dtype)
    mean = (image * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True).clamp_min(1)
    return torch.where(mask, mean.expand_as(image), image)


@torch.no_grad()
def inpaint_sample(
    model_fn: ModelFn, image: torch.Tensor, mask: torch.Tensor, schedule: Schedule, num_steps: int, *,
    resample: int = 1,  # RePaint jumps per step
    clip_x0: bool = True, prediction: str = "eps",  # how the network's output is read, as in ddim_sample
    generator: torch.Generator | None = None, progress: bool = False,
) -> torch.Tensor:  # fmt: skip
    """Fill ``mask`` (B, 1, H, W) bool (True = unknown) of ``image`` (B, C, H, W) in [-1, 1] → (B, C, H, W)."""
    check_mask(mask, image)
    if int(resample) < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    descent = ddim_descent(schedule, num_steps)

    def noise():
        return torch.randn(image.shape, generator=generator, dtype=image.dtype).to(image.device)

    def known_at(abar: float) -> torch.Tensor:
        return image if abar >= 1 else abar**0.5 * image + (1 - abar) ** 0.5 * noise()

    x = torch.where(mask, noise(), known_at(descent[0][2]))
    for i, t, a_t, a_s in tqdm(descent, desc="inpaint", disable=not progress, leave=False):
        for r in range(int(resample)):
            eps, x0 = _predict(model_fn, x, t, a_t, prediction, clip_x0)
            x_s = torch.where(mask, ddim_step(eps, x0, a_t, a_s), known_at(a_s))
            if r + 1 < int(resample) and i > 0:  # RePaint: back to t by q(x_t | x_s) and redo the step
                x = (a_t / a_s) ** 0.5 * x_s + (1 - a_t / a_s) ** 0.5 * noise()
            else:
                x = x_s
    return x


@torch.no_grad()
def inpaint_image(
    model,
    image: torch.Tensor,
    mask: torch.Tensor,
    T: int,
    *,
    resample: int = 1,
    seed: int = 0,
    overlap: int = 8,
    window_batch: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """Fill ``mask`` (1, 1, H, W) of ``image`` (1, 3, H, W) in [-1, 1] with a DiffAE → (1, 3, H, W) on its device.

    z_sem comes from the real pixels (holes filled by :func:`fill_for_encoding`); an S×S image is one tile,
    a larger one a MultiDiffusion canvas whose windows each encode their own crop.
    """
    check_mask(mask, image)
    s = model.image_size
    h, w = image.shape[-2:]
    window_origins(h, s, int(overlap))  # the image must hold at least one tile
    window_origins(w, s, int(overlap))
    filled = fill_for_encoding(image, mask)
    if (h, w) == (s, s):
        fn = model.decoder_fn(model.encode(filled).cpu())
    else:
        dec, codes = model.ema_model.decoder, []
        fn = MosaicModel(lambda x, t, idx: dec(x, t, cond=torch.cat(codes)[idx.cpu()].to(x.device)), h, w, s,
                         int(overlap), int(window_batch))  # fmt: skip
        crops = [filled[:, :, r : r + s, c : c + s] for r, c in fn.origins]
        bs = int(window_batch)
        codes.extend(model.encode(torch.cat(crops[i : i + bs])).cpu() for i in range(0, len(crops), bs))
    gen = torch.Generator().manual_seed(int(seed))
    d = model.diffusion_conf
    return inpaint_sample(
        fn, image.to(model.device), mask.to(model.device), model.schedule, int(T), resample=int(resample),
        clip_x0=d.clip_x0, prediction=d.prediction, generator=gen, progress=progress,
    )  # fmt: skip


def comparison_image(image: np.ndarray, mask: torch.Tensor, result: np.ndarray) -> np.ndarray:
    """uint8 (H, 2W + 4, 3): the input (H, W, 3) uint8 with the hole in magenta | a white gap | the result."""
    shown = image.copy()
    shown[mask[0, 0].cpu().numpy()] = (255, 0, 255)
    return np.concatenate([shown, np.full((shown.shape[0], 4, 3), 255, np.uint8), result], axis=1)
