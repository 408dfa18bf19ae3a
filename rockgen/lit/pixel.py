"""``PixelDiffusion``: the ``MethodModule`` driving the pixel DDPM baseline (``rockgen.methods.pixel``)."""

from __future__ import annotations

from typing import Any

from rockgen.lit.module import MethodModule
from rockgen.methods.pixel import PixelDDPM


class PixelDiffusion(MethodModule):
    """Pixel-space DDPM/DDIM; arguments: those of ``rockgen.methods.pixel.PixelDDPM``."""

    def __init__(self, *args: Any, **hparams: Any) -> None:
        super().__init__(PixelDDPM(*args, **hparams))
