"""Reconstruction quality (PSNR, SSIM, LPIPS) of autoencoded tiles, DDP-safe through torchmetrics states.

LPIPS is reported only when the AlexNet (or VGG) backbone weights are on disk: offline its constructor would
fail, and a random backbone gives numbers that are not LPIPS. Without the weights the metric is left out and
one warning per process says which file is missing.

    metrics = ReconstructionMetrics()           # lpips=None: use LPIPS if its weights are present
    metrics.update(pred01, target01)            # (B, 3, H, W) in [0, 1]
    metrics.compute()                           # {"psnr": 31.2, "ssim": 0.91, "lpips": 0.08}
"""

from __future__ import annotations

import warnings

import lpips as lpips_pkg
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from rockgen.metrics.weights import (
    LPIPS_BACKBONE,
    MissingWeightsError,
    missing_weights_message,
    weights_available,
)

_WARNED: set[str] = set()  # backbones already warned about in this process


class MissingWeightsWarning(UserWarning):
    """A metric was skipped because its pretrained backbone is not on disk."""


def _warn_missing_once(name: str, consequence: str) -> None:
    """Warn once per process and backbone that its weights are missing (every update would repeat it)."""
    if name in _WARNED:
        return
    _WARNED.add(name)
    warnings.warn(f"{missing_weights_message(name)} {consequence}", MissingWeightsWarning, stacklevel=3)


def _backbone(net: str) -> str:
    """Backbone name of an lpips `net` ('alex' | 'vgg')."""
    if net not in LPIPS_BACKBONE:
        raise ValueError(f"lpips net must be one of {sorted(LPIPS_BACKBONE)}, got {net!r}")
    return LPIPS_BACKBONE[net]


def lpips_available(net: str = "alex") -> bool:
    """True if LPIPS with backbone `net` can be built offline (its ImageNet weights are cached)."""
    return weights_available(_backbone(net))


class FrozenLPIPS(lpips_pkg.LPIPS):
    """lpips.LPIPS pinned to eval mode: its linear heads hold Dropout, which must stay off."""

    def train(self, mode: bool = True) -> FrozenLPIPS:
        return super().train(False)


def build_lpips(net: str = "alex", require: bool = True) -> FrozenLPIPS | None:
    """Frozen eval-mode `lpips.LPIPS(net)`: forward(x (B,3,H,W) in [-1,1], y) -> (B,1,1,1) distance.

    Checks the backbone file first; if missing, raises MissingWeightsError (require=True) or warns once and
    returns None (require=False). Parameters are frozen but gradients flow to the inputs (perceptual loss).
    """
    name = _backbone(net)
    if not weights_available(name):
        if require:
            raise MissingWeightsError(name)
        _warn_missing_once(name, "The LPIPS term is disabled.")
        return None
    with warnings.catch_warnings():
        # lpips calls torchvision's deprecated `pretrained=True`; the warning is torchvision's, not ours
        warnings.filterwarnings("ignore", message=".*deprecated since 0.13.*", category=UserWarning)
        model = FrozenLPIPS(net=net, verbose=False)
    model.requires_grad_(False)
    return model.eval()


class LPIPSMetric(Metric):
    """Mean LPIPS over images (per-image distance, averaged); the backbone is kept out of state_dict.

    The network is stored outside the module tree so checkpoints of a parent module hold no backbone weights
    and load on machines that lack them; it follows the inputs' device lazily in `update`.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, net: str = "alex", **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "_net", build_lpips(net, require=True))  # not registered: see class docstring
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, pred01: Tensor, target01: Tensor) -> None:
        """Accumulate LPIPS of pred01 vs target01, both (B, 3, H, W) in [0, 1]."""
        net = self._net
        if next(net.parameters()).device != pred01.device:
            net.to(pred01.device)
        with torch.no_grad(), torch.autocast(pred01.device.type, enabled=False):
            dist = net(pred01.float() * 2 - 1, target01.float() * 2 - 1)  # (B, 1, 1, 1)
        self.score_sum += dist.sum().double()
        self.count += dist.shape[0]

    def compute(self) -> Tensor:
        """Mean LPIPS over all images seen (all ranks)."""
        return (self.score_sum / self.count).float()


class ReconstructionMetrics(nn.Module):
    """PSNR, SSIM and (if its weights exist) LPIPS of reconstructions, each computed per image then averaged.

    PSNR: data_range 1.0, one value per image from its own MSE, then the mean over images (not the PSNR
    of the pooled MSE). SSIM: Gaussian window sigma 1.5 (11x11), data_range 1.0, one value per image, mean
    over images. LPIPS: lpips package, net='alex', inputs mapped to [-1, 1], mean over images.
    Inputs are clamped to [0, 1] first.

    lpips: None = use LPIPS when its weights are present (else warn once and omit the key); True = require it
    (MissingWeightsError if absent); False = never.
    """

    def __init__(self, lpips: bool | None = None, lpips_net: str = "alex"):
        super().__init__()
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))  # dim => per-image PSNR
        self.ssim = StructuralSimilarityIndexMeasure(gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0)
        use_lpips = lpips_available(lpips_net) if lpips is None else lpips
        if lpips is None and not use_lpips:
            _warn_missing_once(_backbone(lpips_net), "LPIPS is left out of the reconstruction metrics.")
        self.lpips = LPIPSMetric(lpips_net) if use_lpips else None

    @property
    def names(self) -> list[str]:
        """Keys `compute` returns."""
        return ["psnr", "ssim"] + (["lpips"] if self.lpips is not None else [])

    @torch.no_grad()
    def update(self, pred01: Tensor, target01: Tensor) -> None:
        """Accumulate a batch: pred01, target01 (B, 3, H, W) float in [0, 1]."""
        if pred01.shape != target01.shape or pred01.dim() != 4:
            raise ValueError(f"expected two (B, C, H, W) of one shape, got {pred01.shape}, {target01.shape}")
        pred01 = pred01.detach().float().clamp(0, 1)
        target01 = target01.detach().float().clamp(0, 1)
        self.psnr.update(pred01, target01)
        self.ssim.update(pred01, target01)
        if self.lpips is not None:
            self.lpips.update(pred01, target01)

    def compute(self) -> dict[str, float]:
        """Averages over every image seen since the last reset, synced across DDP ranks."""
        out = {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute())}
        if self.lpips is not None:
            out["lpips"] = float(self.lpips.compute())
        return out

    def reset(self) -> None:
        """Clear the accumulated states (call at the start of each evaluation)."""
        self.psnr.reset()
        self.ssim.reset()
        if self.lpips is not None:
            self.lpips.reset()
