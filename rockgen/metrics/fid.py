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

from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from rockgen.metrics.weights import require_weights, weights_available


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
