"""Find pretrained backbone weights on local disk, so metrics decide *before* constructing anything.

`lpips.LPIPS`, torchmetrics' LPIPS and torchmetrics' FID fetch their backbones in the constructor, which fails
(or hangs) offline. They all read `<torch.hub.get_dir()>/checkpoints/<file>` first and load a file found there
with no network and no hash check, so checking that path is enough to know whether construction is safe.

    from rockgen.metrics.weights import weights_available, backbone_weight_path
    weights_available("alexnet")          # -> False on a machine that never downloaded it
    backbone_weight_path("inception")     # -> ~/.cache/torch/hub/checkpoints/weights-inception-...pth
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# name -> (file under hub/checkpoints, who uses it, a command that downloads it on a machine with network)
_BACKBONES: dict[str, tuple[str, str, str]] = {
    "alexnet": (
        "alexnet-owt-7be5be79.pth",
        "LPIPS (net='alex')",
        "python -c 'import lpips; lpips.LPIPS(net=\"alex\")'",
    ),
    "vgg16": (
        "vgg16-397923af.pth",
        "LPIPS (net='vgg')",
        "python -c 'import lpips; lpips.LPIPS(net=\"vgg\")'",
    ),
    "inception": (
        "weights-inception-2015-12-05-6726825d.pth",
        "FID (torch-fidelity InceptionV3)",
        "pip install torch-fidelity && python -c "
        "'from torchmetrics.image.fid import FrechetInceptionDistance as F; F(2048)'",
    ),
}

# lpips' `net` argument -> backbone name above
LPIPS_BACKBONE = {"alex": "alexnet", "vgg": "vgg16"}


def torch_home() -> Path:
    """Torch's cache root as torch.hub finds it: $TORCH_HOME, else $XDG_CACHE_HOME/torch or ~/.cache/torch."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def checkpoints_dir() -> Path:
    """Where torch.hub caches weight files: `<torch_home>/hub/checkpoints` unless torch.hub.set_dir."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _entry(name: str) -> tuple[str, str, str]:
    """Table entry of a known backbone; ValueError naming the known ones otherwise."""
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(_BACKBONES)}")
    return _BACKBONES[name]


def backbone_weight_path(name: str) -> Path:
    """Path where torch.hub looks for the weights of `name` ('alexnet' | 'vgg16' | 'inception')."""
    return checkpoints_dir() / _entry(name)[0]


def weights_available(name: str) -> bool:
    """True if the weight file of `name` is on disk, i.e. constructing its user needs no network."""
    return backbone_weight_path(name).is_file()


def missing_weights_message(name: str) -> str:
    """Human-readable explanation of which file is missing, where it is looked for and how to get it."""
    file, user, command = _entry(name)
    return (
        f"{user} needs the pretrained weight file {file!r}, not found at {backbone_weight_path(name)} "
        f"(TORCH_HOME={torch_home()}; set $TORCH_HOME to change it). rockgen never downloads weights: "
        f"run once on a machine with network: {command}  then copy <TORCH_HOME>/hub/checkpoints/{file} "
        f"from there to {checkpoints_dir()}/ (or point TORCH_HOME at a folder with hub/checkpoints/{file})."
    )


class MissingWeightsError(RuntimeError):
    """A metric or loss was required but its backbone weights are not on disk (raised before any download)."""

    def __init__(self, name: str):
        self.name = name
        self.path = backbone_weight_path(name)
        super().__init__(missing_weights_message(name))


def require_weights(name: str) -> Path:
    """Path of the weights of `name`; MissingWeightsError if the file is absent."""
    path = backbone_weight_path(name)
    if not path.is_file():
        raise MissingWeightsError(name)
    return path
