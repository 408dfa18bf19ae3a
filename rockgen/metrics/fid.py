"""FID of generated vs real tiles: torchmetrics' FrechetInceptionDistance, built offline from a local file.

The standard Inception path needs the `torch-fidelity` package and the cached file
`weights-inception-2015-12-05-6726825d.pth`; both are checked before anything is constructed. A custom
`feature` module (any (B, 3, H, W) in [0, 1] -> (B, D) network) needs neither.

    fid = build_fid()                           # or build_fid(feature=my_encoder)
    fid.update(real01, real=True)               # (B, 3, H, W) float in [0, 1]
    fid.update(fake01, real=False)
    fid.compute()                               # scalar tensor
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from rockgen.metrics.weights import require_weights, weights_available

# KID keeps every feature in a buffer: that is what we want here (a few hundred tiles)
warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")


def torch_fidelity_installed() -> bool:
    """True if torch-fidelity (torchmetrics' Inception feature extractor) is importable."""
    return importlib.util.find_spec("torch_fidelity") is not None


def fid_available() -> bool:
    """True if the Inception FID can be built offline (torch-fidelity installed and weights cached)."""
    return torch_fidelity_installed() and weights_available("inception")


def build_fid(
    feature_dim: int = 2048, *, feature: nn.Module | None = None, reset_real_features: bool = True
) -> FrechetInceptionDistance:
    """FrechetInceptionDistance taking float images in [0, 1] (normalize=True), never touching the network.

    feature_dim: Inception pool feature size (64 | 192 | 768 | 2048). feature: a module mapping
    (B, 3, H, W) in [0, 1] to (B, D) features used instead of Inception (give it `num_features = D` to skip
    torchmetrics' 299x299 probe). reset_real_features=False keeps the real statistics across `reset()`.
    Raises ImportError without torch-fidelity, MissingWeightsError without the Inception file.
    """
    if feature is not None:
        return FrechetInceptionDistance(feature=feature, normalize=True, reset_real_features=reset_real_features)
    if not torch_fidelity_installed():
        raise ImportError(
            "Inception FID needs the torch-fidelity package (`pip install torch-fidelity`) and the file "
            "weights-inception-2015-12-05-6726825d.pth; or pass feature=<nn.Module> for a custom feature FID."
        )
    path = require_weights("inception")
    return FrechetInceptionDistance(
        feature=feature_dim,
        normalize=True,
        reset_real_features=reset_real_features,
        feature_extractor_weights_path=str(path),
    )


def fid_unavailable_reason() -> str | None:
    """Why the Inception FID/KID cannot be built offline here (None when it can): what to install or copy."""
    if not torch_fidelity_installed():
        return "FID/KID need the torch-fidelity package: pip install 'rockgen[fid]' (or torch-fidelity)"
    if not weights_available("inception"):
        from rockgen.metrics.weights import missing_weights_message

        return missing_weights_message("inception")
    return None


class Precomputed(nn.Module):
    """Identity 'feature extractor': the metrics receive features already computed once by ``feature``."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


class InceptionFeatures(nn.Module):
    """torch-fidelity's InceptionV3 pool features (B, ``num_features``) of images (B, 3, H, W) in [0, 1].

    Built offline from the cached weight file (ImportError / MissingWeightsError, naming what is missing, before
    anything is constructed). The network takes uint8 images and resizes them to 299² itself.
    """

    def __init__(self, num_features: int = 2048) -> None:
        super().__init__()
        if not torch_fidelity_installed():
            raise ImportError(fid_unavailable_reason())
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.num_features = num_features
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(num_features)],
            feature_extractor_weights_path=str(require_weights("inception")),
        )

    def forward(self, x):
        return self.net((x.clamp(0, 1) * 255).round().to(torch.uint8))


class DistributionScores:
    """FID and KID (mean ± std over subsets) of generated vs real images, features extracted once per image.

    FID (Heusel et al. 2017): ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2(Σ_r Σ_g)^½) of Inception pool features.
    KID (Bińkowski et al. 2018): unbiased MMD² with the cubic kernel k(a, b) = (aᵀb / d + 1)³, averaged over
    ``subsets`` random subsets of ``subset_size`` per side; unbiased, so preferred at small sample counts.
    ``feature``: (B, 3, H, W) in [0, 1] → (B, D); default the Inception network of torchmetrics (offline: the
    weight file must be cached, see ``fid_unavailable_reason``).

        scores = DistributionScores()
        scores.update(real01, real=True); scores.update(fake01, real=False)
        scores.compute()   # {"fid": .., "kid": .., "kid_std": .., "n_real": .., "n_fake": ..}
    """

    def __init__(
        self, *, feature: nn.Module | None = None, feature_dim: int = 2048, subset_size: int = 50, subsets: int = 100
    ) -> None:
        feature = feature if feature is not None else InceptionFeatures(feature_dim)
        feature_dim = int(getattr(feature, "num_features", feature_dim))
        self.feature, self.subset_size, self.subsets = feature.eval(), subset_size, subsets
        self.feature_dim = feature_dim
        self._real: list = []
        self._fake: list = []

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add a batch (B, 3, H, W) of images in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"DistributionScores.update expects (B, 3, H, W) images, got {tuple(images.shape)}")
        feats = self.feature.to(images.device)(images.clamp(0, 1).float()).reshape(images.shape[0], -1)
        feats = feats.double().cpu()
        (self._real if real else self._fake).append(feats)

    def compute(self, seed: int = 0) -> dict[str, float]:
        """FID, KID and KID's std over subsets; KID's subset size is capped by the smaller side."""
        real, fake = torch.cat(self._real), torch.cat(self._fake)
        n = min(len(real), len(fake))
        if n < 2:
            raise ValueError(f"FID/KID need at least 2 real and 2 generated images, got {len(real)} and {len(fake)}")
        fid = FrechetInceptionDistance(feature=Precomputed(self.feature_dim), normalize=True).double()
        fid.update(real, real=True)
        fid.update(fake, real=False)
        torch.manual_seed(seed)  # KID draws its subsets with torch's global generator
        kid = KernelInceptionDistance(
            feature=Precomputed(self.feature_dim), subset_size=min(self.subset_size, n), subsets=self.subsets
        ).double()
        kid.update(real, real=True)
        kid.update(fake, real=False)
        kid_mean, kid_std = kid.compute()
        return {
            "fid": float(fid.compute()),
            "kid": float(kid_mean),
            "kid_std": float(kid_std),
            "n_real": len(real),
            "n_fake": len(fake),
        }
