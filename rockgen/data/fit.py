"""The ``data.fit`` rule: how one decoded image becomes ``S x S`` tiles (training, latents, interpolate, manipulate).

All functions take and return ``uint8 (H, W, 3)`` arrays; resampling is Lanczos (Pillow).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

FITS = ("crop", "resize", "pad")
LANCZOS = Image.Resampling.LANCZOS


def resize_short_side(img: np.ndarray, size: int) -> np.ndarray:
    """Lanczos-resize ``uint8 (H, W, 3)`` so its shorter side is ``size`` (aspect ratio kept)."""
    h, w = img.shape[:2]
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    return np.asarray(Image.fromarray(img).resize((new_w, new_h), LANCZOS))


def letterbox(img: np.ndarray, size: int, background: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """The whole ``uint8 (H, W, 3)`` image Lanczos-resized so its LONGER side is ``size`` (aspect kept),
    centred on a ``size x size`` canvas of ``background`` -> ``uint8 (size, size, 3)``."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    out = np.empty((size, size, 3), np.uint8)
    out[:] = np.asarray(background, np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    small = img if (new_w, new_h) == (w, h) else np.asarray(Image.fromarray(img).resize((new_w, new_h), LANCZOS))
    out[top : top + new_h, left : left + new_w] = small
    return out


def pad_to(img: np.ndarray, size: int, background: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Centre ``uint8 (H, W, 3)`` on a ``max(H, size) x max(W, size)`` canvas of ``background`` (no rescale)."""
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    out = np.empty((max(h, size), max(w, size), 3), np.uint8)
    out[:] = np.asarray(background, np.uint8)
    top, left = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def fit_image(img: np.ndarray, size: int, fit: str = "crop", background: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """Apply the ``data.fit`` rule to a decoded ``uint8 (H, W, 3)`` image; tiles are then cut from the result.

    * ``"crop"``: native resolution (tiles are windows of it); an image with a side < ``size`` is resized
      (shorter side to ``size``, Lanczos) and centre-cropped to one ``size x size`` tile.
    * ``"resize"``: the whole image, longer side to ``size`` (Lanczos, aspect kept), padded with
      ``background``: object photos (core samples, pebbles) seen whole at ``size x size``.
    * ``"pad"``: native resolution, never rescaled; a side < ``size`` is padded with ``background``.
    """
    if fit not in FITS:
        raise ValueError(f"data.fit must be one of {FITS}, got {fit!r}")
    h, w = img.shape[:2]
    if fit == "resize":
        return letterbox(img, size, background)
    if fit == "pad":
        return pad_to(img, size, background)
    if h < size or w < size:
        img = resize_short_side(img, size)
        top, left = center_window(img.shape[0], img.shape[1], size)
        return np.ascontiguousarray(img[top : top + size, left : left + size])
    return img


def fitted_size(w: int, h: int, size: int, fit: str) -> tuple[int, int]:
    """``(w, h)`` of :func:`fit_image`'s result, from the header size (no decode)."""
    if fit == "resize" or (fit == "crop" and (w < size or h < size)):
        return size, size
    if fit == "pad":
        return max(w, size), max(h, size)
    return w, h


def center_window(h: int, w: int, size: int) -> tuple[int, int]:
    """Top-left ``(top, left)`` of the central ``size`` window of an ``h x w`` image."""
    return (h - size) // 2, (w - size) // 2
