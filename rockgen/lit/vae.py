"""``LitVAE``: the ``MethodModule`` driving the transformer VAE baseline (``rockgen.methods.vae``)."""

from __future__ import annotations

from typing import Any

from rockgen.lit.module import MethodModule
from rockgen.methods.vae import VAE


class LitVAE(MethodModule):
    """Transformer VAE (one decoder pass per sample); arguments: those of ``rockgen.methods.vae.VAE``."""

    def __init__(self, *args: Any, **hparams: Any) -> None:
        super().__init__(VAE(*args, **hparams))
