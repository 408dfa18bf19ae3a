"""FID and KID: the numbers against closed forms on features, and task=compare's Inception path offline.

The Inception weights are never downloaded: the compare test writes a randomly initialised InceptionV3 state dict
into a temporary TORCH_HOME under the file name torch-fidelity looks for, so the real loading path runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import linalg

from rockgen.metrics import DistributionScores, fid_unavailable_reason


class Flatten(torch.nn.Module):
    """A fixed 'feature extractor': mean colour and its square per image (B, 6)."""

    num_features = 6

    def forward(self, x):
        m = x.mean(dim=(2, 3))
        return torch.cat([m, m**2], dim=1)


def fid_reference(a: np.ndarray, b: np.ndarray) -> float:
    """FID of feature sets (N, D) in float64: ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½)."""
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * covmean))


def kid_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² with k(x, y) = (xᵀy / d + 1)³ on the full sets (Bińkowski et al. 2018, eq. 4)."""
    d, m = a.shape[1], a.shape[0]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    off = lambda K: (K.sum() - np.trace(K)) / (m * (m - 1))  # noqa: E731
    return float(off(kaa) + off(kbb) - 2 * kab.mean())


def test_fid_and_kid_match_float64_references():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(40, 3, 8, 8, generator=gen)
    fake = (torch.rand(40, 3, 8, 8, generator=gen) * 0.8 + 0.1).clamp(0, 1)
    scores = DistributionScores(feature=Flatten(), subset_size=40, subsets=3)
    scores.update(real[:25], real=True)
    scores.update(real[25:], real=True)
    scores.update(fake, real=False)
    got = scores.compute()
    fa, fb = Flatten()(real).double().numpy(), Flatten()(fake).double().numpy()
    assert got["fid"] == pytest.approx(fid_reference(fa, fb), rel=1e-4, abs=1e-8)
    # subsets of the full size are permutations of the same sets: KID equals the full-set unbiased MMD², std 0
    assert got["kid"] == pytest.approx(kid_reference(fa, fb), rel=1e-3, abs=1e-7)
    assert got["kid_std"] == pytest.approx(0.0, abs=1e-6)
    assert (got["n_real"], got["n_fake"]) == (40, 40)


def test_identical_sets_score_zero_and_bad_input_is_named():
    x = torch.rand(30, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    scores = DistributionScores(feature=Flatten(), subset_size=10, subsets=5)
    scores.update(x, real=True)
    scores.update(x, real=False)
    got = scores.compute()
    assert abs(got["fid"]) < 1e-3 and abs(got["kid"]) < 1e-3
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        scores.update(torch.rand(2, 8, 8), real=True)
    empty = DistributionScores(feature=Flatten())
    empty.update(x[:1], real=True)
    empty.update(x[:1], real=False)
    with pytest.raises(ValueError, match="at least 2"):
        empty.compute()


def test_missing_inception_weights_say_which_file():
    reason = fid_unavailable_reason()  # the test session's TORCH_HOME is empty
    assert reason is not None and ("weights-inception-2015-12-05-6726825d.pth" in reason or "torch-fidelity" in reason)


@pytest.fixture
def inception_torch_home(tmp_path, monkeypatch):
    """A TORCH_HOME holding a random-weight InceptionV3 under torch-fidelity's file name (never downloaded)."""
    tf = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from unittest import mock

    # build the architecture without its weights (the constructor would download them), then save them as the file
    with (
        mock.patch.object(tf, "load_state_dict_from_url", return_value={}),
        mock.patch.object(tf.FeatureExtractorInceptionV3, "load_state_dict", return_value=None),
    ):
        torch.manual_seed(0)
        net = tf.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(net.state_dict(), folder / "weights-inception-2015-12-05-6726825d.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # torch.hub.get_dir() reads it per call


@pytest.mark.slow
def test_compare_scores_fid_and_kid_with_inception_weights(inception_torch_home, tmp_path):
    from conftest import compose_config
    from test_compare import FAST, save_untrained

    from rockgen.tasks.compare import compare

    assert fid_unavailable_reason() is None
    ckpt = save_untrained("demo_vae", tmp_path / "vae.ckpt")
    run = tmp_path / "run"
    report = compare(compose_config([*FAST, f"compare.vae_ckpt={ckpt}", "compare.isolate=false"], run))
    (model,) = report["models"]
    d = model["distribution"]
    assert d["mode"] == "decode" and (d["n_fake"], d["n_real"]) == (4, 2)
    assert np.isfinite(d["fid"]) and d["fid"] > 0 and d["kid_std"] >= 0
    table = (run / "comparison.md").read_text()
    assert "| FID |" in table and "decode" in table
    rows = (run / "comparison.csv").read_text().splitlines()
    assert rows[0] == "method,source,image_size,row,metric,value"
    assert any(",kid," in r for r in rows) and any(",fid," in r for r in rows)


@pytest.mark.slow
def test_validation_logs_fid_and_kid_when_asked(inception_torch_home, tmp_path):
    from conftest import TINY, compose_config

    from rockgen.tasks.train import train

    train(compose_config([*TINY, "model.evaluation.kid=true", "model.evaluation.kid_subset_size=3"], tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert np.isfinite(metrics["val/fid"]) and metrics["val/kid_std"] >= 0 and "val/kid" in metrics
    header = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/fid", "val/kid", "val/kid_std"} <= set(header)  # the CSV logger (W&B gets the same dict)


@pytest.mark.slow
def test_validation_without_inception_weights_warns_and_trains(tmp_path):
    from conftest import TINY, compose_config

    from rockgen.tasks.train import train

    with pytest.warns(UserWarning, match="FID/KID left out of validation"):
        train(compose_config([*TINY, "model.evaluation.kid=true"], tmp_path))
    assert "val/kid" not in json.loads((tmp_path / "metrics.json").read_text())
