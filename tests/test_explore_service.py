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

from rockgen.explore.canvas import load_canvas, preset_mask
from rockgen.explore.jobs import JobCancelled, JobRunner
from rockgen.explore.service import ExploreService, detect_features, psnr
from rockgen.inpaint import inpaint_image
from rockgen.latent_ops import interpolate, load_image_tensor, manipulate
from rockgen.latents import Latents, latent_stats
from rockgen.mosaic import diffae_mosaic

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


# ---------------------------------------------------------------------------------------------- inpaint, mosaic
def test_preset_masks_cover_what_they_say():
    centre = preset_mask("centre square", 40, 60, 0.5)[0, 0]
    rows, cols = centre.any(1).nonzero().ravel(), centre.any(0).nonzero().ravel()
    assert int(centre.sum()) == 20 * 20 and (int(rows[0]), int(cols[0])) == (10, 20)  # centred 20² square
    left = preset_mask("left strip", 40, 60, 0.25)[0, 0]
    assert left[:, :15].all() and not left[:, 15:].any()
    holes = preset_mask("random holes", 64, 64, 0.4, seed=3)
    assert torch.equal(holes, preset_mask("random holes", 64, 64, 0.4, seed=3))
    assert not torch.equal(holes, preset_mask("random holes", 64, 64, 0.4, seed=4))
    assert 0.2 <= holes.float().mean() <= 0.3  # about size / 2 of the pixels
    with pytest.raises(ValueError, match="mask preset: one of"):
        preset_mask("circle", 8, 8, 0.5)


def test_inpaint_keeps_known_pixels_and_is_the_task_code(service, model, tiles, tmp_path):
    path = tiles["granite"][0]  # 48×48: a canvas of 2×2 windows of 32 px
    x01, mask, out, info = service.inpaint(path, preset="centre square", size=0.5, T=2, seed=1)
    assert x01.shape == out.shape == (1, 3, 48, 48) and mask.shape == (1, 1, 48, 48)
    assert 0 <= float(out.min()) and float(out.max()) <= 1 and "48×48 px (4 windows)" in info
    known = ~mask.expand_as(out)
    torch.testing.assert_close(out[known], x01[known], atol=1e-6, rtol=0)  # the real pixels, exactly
    assert (out[~known] - x01[~known]).abs().mean() > 1e-3  # the hole is generated, not copied
    x = load_canvas(path, 32, 10**6)
    ref = inpaint_image(model, x, mask, 2, seed=1, overlap=8, window_batch=16)
    torch.testing.assert_close(out, ((ref + 1) / 2).clamp(0, 1), atol=0, rtol=0)
    again = service.inpaint(path, preset="centre square", size=0.5, T=2, seed=1)[2]
    other = service.inpaint(path, preset="centre square", size=0.5, T=2, seed=2)[2]
    assert torch.equal(out, again) and not torch.equal(out, other)
    # one tile with an uploaded mask (white = fill)
    Image.fromarray(np.asarray(Image.open(path))[:32, :32]).save(tmp_path / "tile.png")
    hole = np.zeros((32, 32), np.uint8)
    hole[4:12, 20:30] = 255
    Image.fromarray(hole).save(tmp_path / "hole.png")
    x01, mask, out, info = service.inpaint(tmp_path / "tile.png", tmp_path / "hole.png", T=2)
    assert out.shape == (1, 3, 32, 32) and int(mask.sum()) == 80 and "mask hole.png: 80 px filled" in info
    assert torch.equal(out[~mask.expand_as(out)], x01[~mask.expand_as(out)])


def test_inpaint_bad_inputs_are_clear_errors(service, tiles, tmp_path):
    path = tiles["granite"][0]
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "mask40.png")
    with pytest.raises(ValueError, match=r"mask mask40.png is 48x40 px but image granite_0000.png is 48x48 px"):
        service.inpaint(path, tmp_path / "mask40.png", T=2)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"image: not a readable image \(notes.txt\)"):
        service.inpaint(tmp_path / "notes.txt", T=2)
    with pytest.raises(ValueError, match=r"mask notes.txt: not a readable image"):
        service.inpaint(path, tmp_path / "notes.txt", T=2)
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="40×20 px, smaller than the model's 32×32 tile"):
        service.inpaint(tmp_path / "small.png", T=2)
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(ValueError, match="marks no pixel to fill"):
        service.inpaint(path, tmp_path / "blank.png", T=2)
    small = ExploreService(service.model, max_mosaic_pixels=1024)
    try:
        with pytest.raises(ValueError, match="48×48 = 2304 px, more than max_mosaic_pixels=1024"):
            small.inpaint(path, T=2)
        with pytest.raises(ValueError, match="64×32 = 2048 px is more than max_mosaic_pixels=1024"):
            small.mosaic(64, 32, 0, 2, "shared", path)
    finally:
        small.jobs.close()


def test_mosaic_from_a_tiles_code_is_the_task_code_and_deterministic(service, model, tiles):
    path = tiles["layered"][0]
    out, info = service.mosaic(56, 40, seed=3, T=2, z_sem="shared", path=path)
    assert out.shape == (1, 3, 40, 56) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert "56×40 px, 2×2 windows of 32 px, z_sem shared from the tile layered_0000.png" in info
    z_tile = load_image_tensor(path, 32)
    ref = diffae_mosaic(model, 40, 56, 2, seed=3, z_sem="shared", z_tile=z_tile, progress=False)[0]
    torch.testing.assert_close(out, ((ref + 1) / 2).clamp(0, 1), atol=0, rtol=0)
    assert torch.equal(out, service.mosaic(56, 40, seed=3, T=2, path=path)[0])
    assert not torch.equal(out, service.mosaic(56, 40, seed=4, T=2, path=path)[0])
    assert service.jobs.history[-1]["name"] == "mosaic" and service.jobs.history[-1]["calls"] == 1 + 2


def test_mosaic_without_latent_stage_or_with_bad_sizes_says_why(service, tiles):
    with pytest.raises(ValueError, match="z_sem=field is off: this checkpoint has no trained latent DDIM"):
        service.mosaic(64, 64, 0, 2, "field", tiles["layered"][0])
    with pytest.raises(ValueError, match="Upload or pick a tile for the shared z_sem"):
        service.mosaic(64, 64, 0, 2, "shared", None)
    with pytest.raises(ValueError, match=r"mosaic \(16 px\) is smaller than one window \(32 px\)"):
        service.mosaic(16, 64, 0, 2, "shared", tiles["layered"][0])
    with pytest.raises(ValueError, match="z_sem: shared or field"):
        service.mosaic(64, 64, 0, 2, "grid", tiles["layered"][0])


def test_a_long_mosaic_is_cancelled_at_its_next_window_pass(service, tiles):
    errors: list[BaseException] = []
    seen: list[float] = []

    def target():
        try:
            service.mosaic(64, 64, 0, 500, "shared", tiles["layered"][0], progress=lambda f, d: seen.append(f))
        except JobCancelled as err:
            errors.append(err)

    t = threading.Thread(target=target)
    t.start()
    while len(seen) < 3:  # started, and the encoder + a first decoder pass counted
        time.sleep(0.005)
    assert service.cancel() == "cancelling mosaic …"
    t.join(30)
    assert not t.is_alive() and len(errors) == 1
    assert service.jobs.history[-1]["status"] == "cancelled" and service.jobs.history[-1]["calls"] < 500
    assert 0 < seen[-1] < 1  # progress counted in network calls, never 100 % for a cancelled job
