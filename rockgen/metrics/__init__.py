"""Evaluation metrics (PSNR/SSIM/LPIPS, FID) that never download weights: they check the local cache first."""

from rockgen.metrics.fid import (
    DistributionScores,
    build_fid,
    fid_available,
    fid_unavailable_reason,
    torch_fidelity_installed,
)
from rockgen.metrics.recon import (
    FrozenLPIPS,
    LPIPSMetric,
    MissingWeightsWarning,
    ReconstructionMetrics,
    build_lpips,
    lpips_available,
)
from rockgen.metrics.weights import (
    MissingWeightsError,
    backbone_weight_path,
    checkpoints_dir,
    torch_home,
    weights_available,
)

__all__ = [
    "DistributionScores",
    "fid_unavailable_reason",
    "FrozenLPIPS",
    "LPIPSMetric",
    "MissingWeightsError",
    "MissingWeightsWarning",
    "ReconstructionMetrics",
    "backbone_weight_path",
    "build_fid",
    "build_lpips",
    "checkpoints_dir",
    "fid_available",
    "lpips_available",
    "torch_fidelity_installed",
    "torch_home",
    "weights_available",
]
