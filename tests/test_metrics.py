"""Reconstruction metrics and FID: values against independent float64 computations, and the no-weights paths.

Every test runs with TORCH_HOME pointing at a temporary folder: either empty (as on a machine without
pretrained weights) or holding a randomly initialised AlexNet saved under the real file name, which exercises
the exact loading path offline. Values computed with such weights are only checked for structure, never
called LPIPS.
"""

from __future__ import annotations

import math
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from rockgen.metrics import (
    MissingWeightsError,
    MissingWeightsWarning,
    ReconstructionMetrics,
    backbone_weight_path,
    build_fid,
    build_lpips,
    fid_available,
    lpips_available,
    recon,
    torch_home,
    weights_available,
)

ALEX_FILE = "alexnet-owt-7be5be79.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Forget which missing-weight warnings this process already issued."""
    monkeypatch.setattr(recon, "_WARNED", set())


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """TORCH_HOME with no cached weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


@pytest.fixture(scope="session")
def alexnet_home(tmp_path_factory):
    """TORCH_HOME with a random AlexNet under the official file name (classifier as stride-0 zeros: 10 MB)."""
    home = tmp_path_factory.mktemp("torch_home")
    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()
    # LPIPS uses only `features`; the 58 M classifier weights just need the right shapes
    state = {k: v if k.startswith("features.") else torch.zeros(()).expand(v.shape) for k, v in state.items()}
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, home / "hub" / "checkpoints" / ALEX_FILE)
    return home


@pytest.fixture
def with_alexnet(alexnet_home, monkeypatch):
    """TORCH_HOME set to the folder with the locally built AlexNet weights."""
    monkeypatch.setenv("TORCH_HOME", str(alexnet_home))
    return alexnet_home


def ssim_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004) per image in float64, (B, C, H, W) -> (B,): Gaussian 11x11 window, sigma 1.5.

    Window statistics as weighted sums over unfolded 11x11 patches; the image is reflect-padded by 5 so the
    SSIM map keeps the image size (torchmetrics' border convention), then averaged over channels and pixels.
    """
    x, y = x.double(), y.double()
    b, c, h, w = x.shape
    r = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(r**2) / (2 * 1.5**2))
    window = torch.outer(g, g).flatten() / g.sum() ** 2  # (121,)

    def local_mean(t):  # (B, C, H, W) -> (B, C, H, W) Gaussian-weighted mean around each pixel
        patches = F.unfold(F.pad(t, (5, 5, 5, 5), mode="reflect"), 11)  # (B, C*121, H*W)
        return (patches.view(b, c, 121, h * w) * window[:, None]).sum(2).view(b, c, h, w)

    mx, my = local_mean(x), local_mean(y)
    vx, vy, cxy = local_mean(x * x) - mx**2, local_mean(y * y) - my**2, local_mean(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def noisy_pair(n: int, size: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets in [0, 1] and predictions with a different noise level per image, (n, 3, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, size, size, generator=gen)
    levels = torch.linspace(0.05, 0.5, n).view(n, 1, 1, 1)
    pred = ((1 - levels) * target + levels * torch.rand(n, 3, size, size, generator=gen)).clamp(0, 1)
    return pred, target


# ---------------------------------------------------------------- PSNR / SSIM


def test_psnr_is_mean_of_per_image_closed_form(empty_torch_home):
    gen = torch.Generator().manual_seed(1)
    target = 0.25 + 0.5 * torch.rand(3, 3, 16, 16, generator=gen, dtype=torch.float64)
    errors = torch.tensor([0.01, 0.05, 0.2], dtype=torch.float64)
    signs = torch.randint(0, 2, target.shape, generator=gen).double() * 2 - 1
    pred = target + errors.view(3, 1, 1, 1) * signs  # per-image MSE = error**2 exactly, stays in [0, 1]

    metrics = ReconstructionMetrics(lpips=False)
    metrics.update(pred.float(), target.float())
    psnr = metrics.compute()["psnr"]

    per_image = (10 * torch.log10(1 / errors**2)).mean().item()
    pooled = 10 * math.log10(1 / (errors**2).mean().item())
    assert psnr == pytest.approx(per_image, abs=1e-3)
    assert abs(psnr - pooled) > 5  # the batch-pooled MSE would give a very different number


def test_ssim_of_image_with_itself_is_one(empty_torch_home):
    x, _ = noisy_pair(2)
    metrics = ReconstructionMetrics(lpips=False)
    metrics.update(x, x)
    out = metrics.compute()
    assert out["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert out["psnr"] == math.inf


def test_ssim_matches_float64_reference(empty_torch_home):
    pred, target = noisy_pair(2)
    metrics = ReconstructionMetrics(lpips=False)
    metrics.update(pred, target)
    expected = ssim_reference(pred, target).mean().item()
    assert 0.2 < expected < 0.99  # a non-trivial case
    assert metrics.compute()["ssim"] == pytest.approx(expected, abs=1e-5)


def test_metrics_average_over_images_not_over_batches(empty_torch_home):
    pred, target = noisy_pair(4)
    singles = []
    for i in range(4):
        one = ReconstructionMetrics(lpips=False)
        one.update(pred[i : i + 1], target[i : i + 1])
        singles.append(one.compute())

    metrics = ReconstructionMetrics(lpips=False)
    metrics.update(pred[:1], target[:1])  # batches of unequal size: 1 then 3
    metrics.update(pred[1:], target[1:])
    out = metrics.compute()
    for key in ("psnr", "ssim"):
        per_image = sum(s[key] for s in singles) / 4
        batch_means = (singles[0][key] + sum(s[key] for s in singles[1:]) / 3) / 2
        assert out[key] == pytest.approx(per_image, rel=1e-5)
        assert abs(out[key] - batch_means) > 1e-3

    metrics.reset()
    metrics.update(pred[:1], target[:1])
    assert metrics.compute()["psnr"] == pytest.approx(singles[0]["psnr"], rel=1e-6)


# ---------------------------------------------------------------- weight discovery


def test_weight_paths_follow_torch_home(empty_torch_home):
    assert torch_home() == empty_torch_home
    assert backbone_weight_path("alexnet") == empty_torch_home / "hub" / "checkpoints" / ALEX_FILE
    assert backbone_weight_path("vgg16").name == "vgg16-397923af.pth"
    assert backbone_weight_path("inception").name == INCEPTION_FILE
    assert not weights_available("alexnet") and not lpips_available()
    with pytest.raises(ValueError, match="unknown backbone"):
        backbone_weight_path("resnet")


# ---------------------------------------------------------------- LPIPS


def test_lpips_reported_when_weights_present(with_alexnet):
    assert lpips_available("alex")
    pred, target = noisy_pair(2, size=32)
    metrics = ReconstructionMetrics()
    assert metrics.names == ["psnr", "ssim", "lpips"]
    metrics.update(target, target)
    assert metrics.compute()["lpips"] == 0.0
    metrics.reset()
    metrics.update(pred, target)
    assert metrics.compute()["lpips"] > 0.0
    # the backbone stays out of checkpoints, and the metric survives pickling (ddp_spawn)
    assert metrics.state_dict() == {}
    clone = pickle.loads(pickle.dumps(metrics))
    assert clone.compute()["lpips"] == pytest.approx(metrics.compute()["lpips"])


def test_build_lpips_is_frozen_but_passes_gradients(with_alexnet):
    net = build_lpips("alex")
    assert not any(p.requires_grad for p in net.parameters())
    nn.ModuleDict({"lpips": net}).train()  # a parent put in training mode must not switch on its Dropout
    assert not net.training
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_()
    net(x, torch.zeros_like(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_lpips_missing_warns_once_and_is_omitted(empty_torch_home):
    pred, target = noisy_pair(2, size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = ReconstructionMetrics(), ReconstructionMetrics()
        assert build_lpips(require=False) is None
    missing = [w for w in caught if issubclass(w.category, MissingWeightsWarning)]
    assert len(missing) == 1
    message = str(missing[0].message)
    assert ALEX_FILE in message and str(empty_torch_home) in message
    first.update(pred, target)
    assert set(first.compute()) == {"psnr", "ssim"}
    assert second.lpips is None


def test_lpips_required_without_weights_raises(empty_torch_home):
    with pytest.raises(MissingWeightsError, match=ALEX_FILE) as info:
        build_lpips("alex", require=True)
    assert info.value.path == empty_torch_home / "hub" / "checkpoints" / ALEX_FILE
    with pytest.raises(MissingWeightsError, match="TORCH_HOME"):
        ReconstructionMetrics(lpips=True)


# ---------------------------------------------------------------- FID


class TinyFeatures(nn.Module):
    """A fixed random projection of 4x4-pooled colour: (B, 3, H, W) in [0, 1] -> (B, 8)."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, self.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.adaptive_avg_pool2d(x, 4).flatten(1))


def test_fid_with_custom_features_separates_distributions():
    torch.manual_seed(0)
    fid = build_fid(feature=TinyFeatures(), reset_real_features=False)
    fid.update(torch.rand(256, 3, 16, 16), real=True)
    fid.update(torch.rand(256, 3, 16, 16), real=False)
    same = fid.compute().item()
    fid.reset()  # keeps the real statistics
    fid.update(0.5 + 0.5 * torch.rand(256, 3, 16, 16), real=False)
    shifted = fid.compute().item()
    assert 0 <= same < 0.1 * shifted


def test_inception_fid_unavailable_without_weights(empty_torch_home):
    assert not fid_available()
    with pytest.raises((MissingWeightsError, ImportError), match="torch-fidelity|" + INCEPTION_FILE):
        build_fid()


def test_inception_fid_loads_local_file_offline(empty_torch_home, monkeypatch):
    extractor = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    cls = extractor.FeatureExtractorInceptionV3
    with monkeypatch.context() as patch:  # build a random Inception once to save it under the official name
        patch.setattr(extractor, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(cls, "load_state_dict", lambda self, *a, **k: None)
        state = cls("inception-v3-compat", ["2048"]).state_dict()
    path = backbone_weight_path("inception")
    path.parent.mkdir(parents=True)
    torch.save(state, path)

    def no_download(*args, **kwargs):
        raise AssertionError("FID tried to download weights")

    monkeypatch.setattr(extractor, "load_state_dict_from_url", no_download)
    assert fid_available()
    fid = build_fid(64)
    fid.update(torch.rand(2, 3, 32, 32), real=True)
    fid.update(torch.rand(2, 3, 32, 32), real=False)
    assert torch.isfinite(fid.compute())


# ---------------------------------------------------------------- DDP


def _ddp_rank(rank: int, world: int, port: int, queue) -> None:
    """One gloo rank: update with its half of the images, put the synced scores in `queue`."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        pred, target = noisy_pair(4, size=32)
        metrics = ReconstructionMetrics(lpips=False)  # LPIPS states sync the same way (sums)
        metrics.update(pred[rank::world], target[rank::world])
        scores = metrics.compute()
        if rank == 0:
            queue.put(scores)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_sync_across_two_gloo_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_ddp_rank, args=(2, port, queue), nprocs=2, start_method="spawn")
    synced = queue.get(timeout=10)

    pred, target = noisy_pair(4, size=32)
    single = ReconstructionMetrics(lpips=False)
    single.update(pred, target)
    assert synced == pytest.approx(single.compute(), rel=1e-5)
