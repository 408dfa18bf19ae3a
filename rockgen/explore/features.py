"""What a loaded checkpoint lets the explorer do (read from its generation protocol), and the explorer's limits."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from rockgen.latents import Latents


@dataclass
class Features:
    """What the loaded checkpoint (and latents file) support; ``*_message`` says why something is off."""

    can_sample: bool
    sample_message: str
    classes: list[str] | None = None  # class-conditional latent DDIM: the names ``sample(cls=...)`` takes
    guidance: bool = False  # ``sample(guidance=w)``: classifier-free guidance
    samplers: list[str] = field(default_factory=lambda: ["ddim"])
    can_manipulate: bool = False
    manipulate_message: str = ""
    manipulate_classes: list[str] = field(default_factory=list)


def detect_features(model, latents: Latents | None, labels: list[str | None] | None) -> Features:
    """Feature checks on the model's generation protocol (``sample_options``, ``sample_unavailable``), not its class;
    an object without the protocol is judged by ``sample``'s signature and its ``has_latent``/``latent_ready``."""
    if hasattr(model, "sample_options"):
        params, ready = model.sample_options, model.sample_unavailable() is None
    else:
        params = inspect.signature(model.sample).parameters if hasattr(model, "sample") else {}
        ready = bool(getattr(model, "has_latent", False)) and bool(getattr(model, "latent_ready", False))
    msg = (
        ""
        if ready
        else "Sampling is off: this checkpoint has no trained latent DDIM (stage 2), so it cannot draw z_sem. "
        "Train one with template=demo_latent (or rock*_latent) and open that checkpoint; the other tabs work."
    )
    classes = getattr(model, "classes", None) if "cls" in params else None
    samplers = ["ddim"]
    if "sampler" in params:
        from rockgen import samplers as sampler_module

        samplers = sorted(getattr(sampler_module, "SAMPLERS", {"ddim": None})) or ["ddim"]
    feat = Features(
        can_sample=ready,
        sample_message=msg,
        classes=list(classes) if classes else None,
        guidance=bool(classes) and "guidance" in params,
        samplers=samplers,
    )
    if latents is None:
        feat.manipulate_message = (
            "Manipulation is off: start the explorer with latents_path=<latents.pt of this model>."
        )
    elif labels is None or len({lab for lab in labels if lab}) < 2:
        feat.manipulate_message = (
            "Manipulation is off: the latents file's images carry fewer than two class labels "
            "(sub-folder names, or labels_csv=...)."
        )
    else:
        feat.can_manipulate = True
        feat.manipulate_classes = sorted({lab for lab in labels if lab})
    return feat


@dataclass(frozen=True)
class ExploreSettings:
    """Limits and input handling of the explorer (``task=explore``'s settings of the same names)."""

    fit: str = "crop"  # how an uploaded image becomes a tile (``rockgen.latent_ops.FITS``)
    max_images: int = 64  # tiles per sample, frames per interpolation
    batch_size: int = 16  # images or mosaic windows per forward pass
    holdout: float = 0.2  # fraction of the labelled codes held out when fitting the class directions
    seed: int = 0  # of that split
    max_mosaic_pixels: int = 65536  # the largest mosaic or inpainting canvas (width × height)
