"""The explorer without its web page: one job at a time, cancellation, progress, and each action's images."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from latent_models import demo_tiles, random_diffae
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio as sk_psnr

from rockgen.explore.jobs import JobCancelled, JobRunner
from rockgen.explore.service import ExploreService, detect_features, psnr
from rockgen.latent_ops import interpolate, load_image_tensor, manipulate
from rockgen.latents import Latents, latent_stats

T = 3


# ---------------------------------------------------------------------------------------------- jobs
def _busy(net: torch.nn.Module, calls: int, pause: float = 0.0):
    def fn():
        for _ in range(calls):
            net(torch.zeros(1, 2))
            time.sleep(pause)
        return calls

    return fn


def test_jobs_run_one_at_a_time_in_arrival_order():
    net = torch.nn.Linear(2, 2)
    runner = JobRunner([net])
    threads = [threading.Thread(target=runner.run, args=(f"job{i}", 5, _busy(net, 5, 0.01))) for i in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.005)
    for t in threads:
        t.join(10)
    hist = sorted(runner.history, key=lambda h: h["start"])
    assert [h["status"] for h in hist] == ["done"] * 3 and [h["calls"] for h in hist] == [5, 5, 5]
    for first, second in zip(hist, hist[1:], strict=False):
        assert second["start"] >= first["end"]  # no overlap: the second waited for the first
    assert hist[-1]["waited_s"] > 0.04


def test_cancel_stops_a_job_at_its_next_network_call_and_only_that_job():
    net = torch.nn.Linear(2, 2)
    runner = JobRunner([net])
    assert runner.cancel() is None  # nothing runs: nothing to cancel, and no later job is affected
    errors: list[BaseException] = []

    def endless():
        while True:
            net(torch.zeros(1, 2))
            time.sleep(0.002)

    def target():
        try:
            runner.run("endless", 10**9, endless)
        except JobCancelled as err:
            errors.append(err)

    t = threading.Thread(target=target)
    t.start()
    while not runner.busy:
        time.sleep(0.001)
    time.sleep(0.02)
    assert runner.cancel() == "endless"
    t.join(5)
    assert not t.is_alive() and len(errors) == 1 and "cancelled" in str(errors[0])
    assert runner.history[-1]["status"] == "cancelled" and runner.history[-1]["calls"] > 0
    assert runner.run("next", 3, _busy(net, 3)) == 3 and runner.history[-1]["status"] == "done"


def test_progress_counts_network_calls_and_ends_at_one():
    net = torch.nn.Linear(2, 2)
    runner = JobRunner([net])
    seen: list[float] = []
    runner.run("p", 4, _busy(net, 4), progress=lambda f, desc: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert seen[1:-1] == [0.25, 0.5, 0.75, 0.99]  # a job never shows 100 % before it returned
    net(torch.zeros(1, 2))  # outside a job: neither counted nor an error
    failing = lambda: 1 / 0  # noqa: E731
    with pytest.raises(ZeroDivisionError):
        runner.run("bad", 1, failing)
    assert runner.history[-1]["status"] == "failed" and not runner.busy


# ---------------------------------------------------------------------------------------------- service
@pytest.fixture(scope="module")
def model():
    return random_diffae()


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return demo_tiles(tmp_path_factory.mktemp("demo"), size=48)


@pytest.fixture(scope="module")
def latents(model, tiles):
    files = [p for cls in sorted(tiles) for p in tiles[cls]]
    z = model.encode(torch.cat([load_image_tensor(p, model.image_size) for p in files]))
    mean, std = latent_stats(z)
    return Latents(
        z=z, paths=[str(p) for p in files], labels=[p.parent.name for p in files], mean=mean, std=std, fingerprint="x"
    )


@pytest.fixture(scope="module")
def service(model, latents):
    return ExploreService(model, latents)


def test_psnr_matches_scikit_image():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    ours = psnr(a, b)
    for i in range(2):
        ref = sk_psnr(b[i].double().numpy(), a[i].double().numpy(), data_range=1.0)
        assert ours[i] == pytest.approx(ref, abs=1e-4)


def test_autoencoder_without_latent_stage_cannot_sample_but_says_why(service):
    assert not service.features.can_sample and "latent DDIM" in service.features.sample_message
    with pytest.raises(ValueError, match="no trained latent DDIM"):
        service.sample(2, 0, T, T)
    assert service.features.can_manipulate
    assert service.features.manipulate_classes == ["cobbles", "fractured", "granite", "gravel", "layered"]


def test_reconstruct_is_inversion_then_rendering_and_reports_psnr(service, model, tiles):
    path = tiles["gravel"][0]
    images, info = service.reconstruct(path, T, seed=5)
    assert images.shape == (3, 3, 32, 32) and 0 <= float(images.min()) and float(images.max()) <= 1
    x = load_image_tensor(path, 32)
    z = model.encode(x)
    inferred = model.render(model.encode_stochastic(x, z, T=T), z, T=T)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    zsem_only = model.render(noise, z, T=T)
    torch.testing.assert_close(images[0:1], (x + 1) / 2)
    torch.testing.assert_close(images[1:2], inferred, atol=1e-3, rtol=0)
    torch.testing.assert_close(images[2:3], zsem_only, atol=1e-3, rtol=0)
    assert info["psnr_inferred"] == pytest.approx(psnr(inferred, (x + 1) / 2)[0], abs=0.05)
    assert info["psnr_zsem_only"] == pytest.approx(psnr(zsem_only, (x + 1) / 2)[0], abs=0.05)
    assert "48×48 px → central 32×32 crop" in info["fit"]
    assert service.jobs.history[-1]["name"] == "reconstruct" and service.jobs.history[-1]["calls"] == 1 + 2 * T


def test_interpolate_and_manipulate_are_the_latent_ops(service, model, latents, tiles):
    a, b = tiles["cobbles"][0], tiles["layered"][1]
    frames, text = service.interpolate(a, b, 4, T)
    x_a, x_b = load_image_tensor(a, 32), load_image_tensor(b, 32)
    torch.testing.assert_close(frames, interpolate(model, x_a, x_b, frames=4, T=T), atol=1e-4, rtol=0)
    assert text.startswith("4 frames, DDIM-3")
    images, text = service.manipulate(a, "layered", 0.5, T)
    ref, clf = manipulate(model, latents, x_a, "layered", [0.0, 0.5], T=T, classifier=service.classifier())
    assert images.shape == (3, 3, 32, 32)
    torch.testing.assert_close(images[1:], ref, atol=1e-4, rtol=0)
    assert (images[2] - images[1]).abs().mean() > 1e-3  # the random decoder uses z_sem: α moves the render
    assert "held-out accuracy" in text and str(clf.classes) in text


def test_bad_inputs_are_clear_errors(service, tiles, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"not a readable image \(notes.txt\)"):
        service.reconstruct(tmp_path / "notes.txt", T)
    with pytest.raises(ValueError, match="upload an image"):
        service.reconstruct(None, T)
    with pytest.raises(ValueError, match="frames"):
        service.interpolate(tiles["cobbles"][0], tiles["cobbles"][1], 1, T)
    with pytest.raises(ValueError, match="target class.*basalt"):
        service.manipulate(tiles["cobbles"][0], "basalt", 0.3, T)
    with pytest.raises(ValueError, match="steps"):
        service.reconstruct(tiles["cobbles"][0], 0)
    # a wrong-size image is fitted, and the message says how
    Image.fromarray(np.full((10, 14, 3), 99, np.uint8)).save(tmp_path / "small.png")
    images, info = service.reconstruct(tmp_path / "small.png", T)
    assert images.shape == (3, 3, 32, 32) and "10" not in info["fit"].split("→")[1] and "resized" in info["fit"]


def test_features_follow_the_sample_signature():
    class Conditional:  # the attributes a class-conditional latent-stage checkpoint exposes
        has_latent, latent_ready, classes = True, True, ["a", "b"]

        def sample(self, N, device=None, T=None, T_latent=None, seed=None, cls=None, guidance=None): ...

    class Plain:
        has_latent, latent_ready, classes = True, True, None

        def sample(self, N, device=None, T=None, T_latent=None, seed=None): ...

    cond = detect_features(Conditional(), None, None)
    assert cond.can_sample and cond.classes == ["a", "b"] and cond.guidance
    assert "latents_path" in cond.manipulate_message and not cond.can_manipulate
    plain = detect_features(Plain(), None, None)
    assert plain.can_sample and plain.classes is None and not plain.guidance and plain.samplers == ["ddim"]
