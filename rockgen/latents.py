"""The latents file: z_sem of a whole dataset, in dataset order, with its source paths and statistics.

Written by ``task=infer_latents`` as ``latents.pt`` (loadable with ``weights_only=True``) plus ``latents.npy``::

    z        (N, D) float32   EMA-encoder codes, no augmentation, row i = dataset item i
    paths    list[str] (N)    source image of each row (repeated for grid tiles of one image)
    labels   list[str] (N)    sub-folder of each source relative to the data root ("" at top level)
    mean/std (D,) float32     per-dimension statistics used for z-normalisation (z − μ) / σ
    fingerprint str           identifies the autoencoder weights that produced the codes
    checkpoint str, image_size int, global_step int
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

STD_FLOOR = 1e-5  # a dimension that never varies would otherwise divide by zero


@dataclass
class Latents:
    """In-memory form of a latents file."""

    z: torch.Tensor
    paths: list[str]
    labels: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    fingerprint: str
    checkpoint: str = ""
    image_size: int = 0
    global_step: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.z.shape[1]

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """z̃ = (z − μ) / σ, per dimension."""
        return (z - self.mean.to(z)) / self.std.to(z)

    def denormalise(self, zn: torch.Tensor) -> torch.Tensor:
        """z = z̃ σ + μ, the inverse of ``normalise``."""
        return zn * self.std.to(zn) + self.mean.to(zn)


def latent_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and (population) std of codes z (N, D), computed in float64, std floored."""
    z64 = z.double()
    return z64.mean(0).float(), z64.std(0, unbiased=False).clamp_min(STD_FLOOR).float()


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """A short hash of the encoder's weights: ties a latents file to the autoencoder that made it."""
    h = hashlib.sha1()
    for name, p in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def save_latents(path: str | Path, lat: Latents) -> tuple[Path, Path]:
    """Write ``<path>`` (.pt) and the same codes as ``<path>.with_suffix('.npy')``; returns both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "z": lat.z.float().cpu(),
        "paths": list(lat.paths),
        "labels": list(lat.labels),
        "mean": lat.mean.cpu(),
        "std": lat.std.cpu(),
        "fingerprint": lat.fingerprint,
        "checkpoint": lat.checkpoint,
        "image_size": int(lat.image_size),
        "global_step": int(lat.global_step),
        "format": "rockgen-latents-1",
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    npy = path.with_suffix(".npy")
    np.save(npy, lat.z.float().cpu().numpy())
    return path, npy


def load_latents(path: str | Path, expect_dim: int | None = None, expect_fingerprint: str | None = None) -> Latents:
    """Read a latents file with clear errors for a missing file, a wrong width or a different autoencoder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"latents file not found: {path} (make one with: rockgen "
            "task=infer_latents ckpt_path=<autoencoder checkpoint>)"
        )
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read latents file {path}: {err}") from err
    if not isinstance(d, dict) or d.get("format") != "rockgen-latents-1":
        raise ValueError(f"{path} is not a rockgen latents file (expected the output of task=infer_latents)")
    lat = Latents(
        z=d["z"],
        paths=d["paths"],
        labels=d["labels"],
        mean=d["mean"],
        std=d["std"],
        fingerprint=d["fingerprint"],
        checkpoint=d.get("checkpoint", ""),
        image_size=d.get("image_size", 0),
        global_step=d.get("global_step", 0),
    )
    if expect_dim is not None and lat.dim != expect_dim:
        raise ValueError(
            f"latents file {path} holds {lat.dim}-d codes but the model's z_sem is {expect_dim}-d "
            "(was it made with another autoencoder?)"
        )
    if expect_fingerprint is not None and lat.fingerprint != expect_fingerprint:
        raise ValueError(
            f"latents file {path} was made by a different autoencoder (fingerprint "
            f"{lat.fingerprint}, this checkpoint's encoder is {expect_fingerprint}; file made from "
            f"{lat.checkpoint or 'unknown'}): re-run task=infer_latents with this checkpoint"
        )
    return lat
