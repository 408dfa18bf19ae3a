"""``task=explore`` end to end: the real CLI serves a tiny trained model; every action is driven over HTTP.

The server runs ``python run.py task=explore ...`` in a subprocess on a free port; ``gradio_client`` calls the
page's API endpoints (``/sample``, ``/reconstruct``, ...) as the browser does, and the images it gets back are
compared with the same computation done in this process. One test renders the page in headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, compose_config
from PIL import Image

pytest.importorskip("gradio", reason="task=explore needs the explore extra (gradio)")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

pytestmark = pytest.mark.slow
DISPLAY = 64  # tiles come back upscaled to this size (Lanczos)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A tiny autoencoder, its latents file and a tiny class-conditional latent DDIM, all trained here."""
    from test_latent import latent_overrides

    from rockgen.tasks.infer_latents import infer_latents
    from rockgen.tasks.train import train

    root = tmp_path_factory.mktemp("explore")
    train(compose_config(TINY, root / "ae"))
    ae = root / "ae" / "checkpoints" / "last.ckpt"
    inf = infer_latents(compose_config(["task=infer_latents", f"ckpt_path={ae}", *TINY], root / "latents"))
    # class-conditional (classes = sub-folders): the Sample tab then offers a class and guidance
    train(compose_config([*latent_overrides(ae, inf["latents_path"]), "model.latent.classes=auto"], root / "latent"))
    tiles = sorted(Path(os.environ["ROCKGEN_CACHE_DIR"]).glob("demo*/**/*.png"))
    assert tiles, "the tiny training wrote no demo tiles"
    return {
        "ae": ae,
        "latents": inf["latents_path"],
        "latent": root / "latent" / "checkpoints" / "last.ckpt",
        "tiles": tiles,
    }


class Server:
    """``run.py task=explore`` in a subprocess; ``url`` once it printed its address."""

    def __init__(self, args: list[str], log_dir: Path, timeout: float = 240) -> None:
        env = {**os.environ, "ROCKGEN_LOG_DIR": str(log_dir), "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "0"}
        cmd = [sys.executable, "run.py", "task=explore", "port=0", "device=cpu", f"display_size={DISPLAY}", *args]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        self.url = None
        while self.url is None:
            found = [m for line in self.lines if (m := re.search(r"Explorer running at (http://\S+)", line))]
            if found:
                self.url = found[0].group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("explorer did not start:\n" + "".join(self.lines[-40:]))
            else:
                time.sleep(0.2)
        self.client = Client(self.url, verbose=False)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(pipeline, tmp_path_factory):
    srv = Server(
        [f"ckpt_path={pipeline['latent']}", f"latents_path={pipeline['latents']}", "run_name=app"],
        tmp_path_factory.mktemp("logs"),
    )
    yield srv
    code = srv.stop()
    out = "".join(srv.lines)
    assert code == 0 and "Explorer stopped." in out and "Run directory:" in out, out[-2000:]


@pytest.fixture(scope="module")
def model(pipeline):
    from rockgen.lit.checkpoint import load_checkpoint_module

    return load_checkpoint_module(pipeline["latent"])


def _png(item) -> np.ndarray:
    """An image the API returned (a path, or a gallery item {image: path | {path}}) as (H, W, 3) uint8."""
    if isinstance(item, dict):
        item = item.get("image", item)
        item = item.get("path", item) if isinstance(item, dict) else item
    with Image.open(item) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _view(images01: torch.Tensor) -> np.ndarray:
    """What the server shows for (N, 3, S, S) in [0, 1]: upscaled, uint8 (N, DISPLAY, DISPLAY, 3)."""
    from rockgen.tasks.common import upscale_lanczos
    from rockgen.visual import to_uint8

    return to_uint8(upscale_lanczos(images01, DISPLAY))


def _close(a: np.ndarray, b: np.ndarray, tol: int = 3) -> bool:
    """Equal up to float rounding between two processes (thread counts), seen through uint8."""
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= tol


def _sample(client, seed: int, n: int = 3, steps: int = 2):
    return client.predict(n, seed, steps, steps, "ddim", "", 1.0, api_name="/sample")


# ---------------------------------------------------------------------------------------------- actions
def test_sample_returns_the_models_tiles_deterministically(server, model):
    gallery, info, grid = _sample(server.client, seed=1)
    tiles = np.stack([_png(g) for g in gallery])
    assert tiles.shape == (3, DISPLAY, DISPLAY, 3) and tiles.std() > 1  # not a blank page
    assert "3 tiles, seed 1, latent DDIM-2 + DDIM-2" in info
    expected = _view(model.sample(3, "cpu", T=2, T_latent=2, seed=1))
    assert _close(tiles, expected), "the server's samples differ from model.sample with the same seed"
    again = np.stack([_png(g) for g in _sample(server.client, seed=1)[0]])
    other = np.stack([_png(g) for g in _sample(server.client, seed=2)[0]])
    assert np.array_equal(again, tiles) and not _close(other, tiles, tol=0)
    assert _png(grid).shape == (DISPLAY + 4, 3 * (DISPLAY + 2) + 2, 3)  # the downloadable PNG grid


def test_sample_with_a_class_and_guidance(server, model):
    assert model.classes == ["cobbles", "fractured", "granite", "gravel", "layered"]
    gallery, info, _ = server.client.predict(2, 5, 2, 2, "ddim", "layered", 2.0, api_name="/sample")
    assert "class 'layered', guidance 2" in info
    expected = _view(model.sample(2, "cpu", T=2, T_latent=2, seed=5, cls="layered", guidance=2.0))
    assert _close(np.stack([_png(g) for g in gallery]), expected)
    with pytest.raises(AppError, match="basalt"):
        server.client.predict(2, 5, 2, 2, "ddim", "basalt", 2.0, api_name="/sample")


def test_reconstruct_shows_input_both_reconstructions_and_their_psnr(server, model, pipeline):
    from rockgen.explore.service import psnr
    from rockgen.latent_ops import load_image_tensor

    tile = pipeline["tiles"][0]
    gallery, info, strip = server.client.predict(handle_file(str(tile)), 3, 7, api_name="/reconstruct")
    images = np.stack([_png(g) for g in gallery])
    assert images.shape == (3, DISPLAY, DISPLAY, 3)
    x = load_image_tensor(tile, model.image_size)
    z = model.encode(x)
    inferred = model.render(model.encode_stochastic(x, z, T=3), z, T=3)
    zsem = model.render(torch.randn(x.shape, generator=torch.Generator().manual_seed(7)), z, T=3)
    assert _close(images, _view(torch.cat([(x + 1) / 2, inferred, zsem])))
    shown = [float(v) for v in re.findall(r"\*\*([\d.]+) dB\*\*", info)]
    assert shown == pytest.approx([psnr(inferred, (x + 1) / 2)[0], psnr(zsem, (x + 1) / 2)[0]], abs=0.05)
    assert [g["caption"].split(":")[0] for g in gallery] == ["input", "inferred x_T", "z_sem only"]
    assert _png(strip).shape[1] == 3 * (DISPLAY + 2) + 2


def test_interpolate_frames_and_frame_slider(server, pipeline):
    a, b = pipeline["tiles"][0], pipeline["tiles"][-1]
    view, slider, gallery, info, strip = server.client.predict(
        handle_file(str(a)), handle_file(str(b)), 4, 2, api_name="/interpolate"
    )
    frames = np.stack([_png(g) for g in gallery])
    assert frames.shape == (4, DISPLAY, DISPLAY, 3) and slider["maximum"] == 3
    assert np.array_equal(_png(view), frames[slider["value"]])
    assert not np.array_equal(frames[0], frames[-1]) and info.startswith("4 frames, DDIM-2")
    assert _png(strip).shape[1] == 4 * (DISPLAY + 2) + 2


def test_manipulate_alpha_zero_is_the_reconstruction(server, pipeline):
    tile = handle_file(str(pipeline["tiles"][1]))
    gallery, info, _ = server.client.predict(tile, "layered", 0.5, 3, api_name="/manipulate")
    images = np.stack([_png(g) for g in gallery])
    assert images.shape == (3, DISPLAY, DISPLAY, 3) and "held-out accuracy" in info and "'layered'" in info
    rec = np.stack([_png(g) for g in server.client.predict(tile, 3, 0, api_name="/reconstruct")[0]])
    assert _close(images[1], rec[1])  # α = 0 renders the tile's own inverted x_T with its own z_sem


def test_inpaint_keeps_the_known_pixels_and_is_deterministic(server, pipeline, model, tmp_path):
    from rockgen.explore.canvas import load_canvas, preset_mask
    from rockgen.inpaint import inpaint_image

    tile = pipeline["tiles"][0]
    args = (handle_file(str(tile)), None, "centre square", 0.5, 2, 3, 1)
    view, info, png = server.client.predict(*args, api_name="/inpaint")
    original = np.asarray(Image.open(tile).convert("RGB"))
    result = _png(png)
    h, w = original.shape[:2]
    mask = preset_mask("centre square", h, w, 0.5)[0, 0].numpy()
    assert result.shape == original.shape and "px filled" in info and "DDIM-2" in info
    assert np.array_equal(result[~mask], original[~mask])  # the real pixels come back exactly
    x = load_canvas(tile, model.image_size, 10**6)
    ref = inpaint_image(model, x, torch.from_numpy(mask)[None, None], 2, seed=3, overlap=model.image_size // 4)
    assert _close(result, _u8(ref))  # the task's code (rockgen.inpaint.inpaint_image) in this process
    shown = _png(view)  # input with the hole in magenta | result, enlarged by the display factor
    k = DISPLAY // model.image_size
    assert shown.shape == (h * k, (2 * w + 4) * k, 3)
    assert (shown[: h * k, : w * k][np.kron(mask, np.ones((k, k), bool))] == (255, 0, 255)).all()
    assert np.array_equal(_png(server.client.predict(*args, api_name="/inpaint")[2]), result)
    # an uploaded mask of another size, and a file that is not an image: clear messages
    Image.fromarray(np.full((h + 3, w, 3), 255, np.uint8)).save(tmp_path / "big_mask.png")
    with pytest.raises(AppError, match=r"(?s)mask big_mask\.png is .* they must be the same size"):
        server.client.predict(handle_file(str(tile)), handle_file(str(tmp_path / "big_mask.png")), "centre square",
                              0.5, 2, 0, 1, api_name="/inpaint")  # fmt: skip
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(AppError, match=r"(?s)notes\.txt"):
        server.client.predict(handle_file(str(tmp_path / "notes.txt")), None, "left strip", 0.5, 2, 0, 1,
                              api_name="/inpaint")  # fmt: skip


def _u8(x: torch.Tensor) -> np.ndarray:
    from rockgen.visual import to_uint8

    return to_uint8(((x + 1) / 2).clamp(0, 1))[0]


def test_mosaic_from_a_tile_or_a_field_of_latent_draws(server, pipeline, model):
    from rockgen.latent_ops import load_image_tensor
    from rockgen.mosaic import diffae_mosaic

    tile = pipeline["tiles"][0]
    args = (56, 40, 5, 2, "shared", handle_file(str(tile)), 2, 4)
    view, info, png = server.client.predict(*args, api_name="/mosaic")
    image = _png(png)
    assert image.shape == (40, 56, 3) and image.std() > 1 and "56×40 px, 2×2 windows" in info
    z_tile = load_image_tensor(tile, model.image_size)
    ref = diffae_mosaic(model, 40, 56, 2, seed=5, z_tile=z_tile, window_batch=4, progress=False)[0]
    assert _close(image, _u8(ref))
    k = DISPLAY // model.image_size
    assert _png(view).shape == (40 * k, 56 * k, 3)
    assert np.array_equal(_png(server.client.predict(*args, api_name="/mosaic")[2]), image)
    _, info, png = server.client.predict(48, 48, 5, 2, "field", None, 2, 16, api_name="/mosaic")
    assert _png(png).shape == (48, 48, 3) and "z_sem field from latent-DDIM draws" in info


# ---------------------------------------------------------------------------------------------- bad input, concurrency
def test_bad_uploads_get_clear_messages_and_odd_sizes_are_fitted(server, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(AppError, match=r"(?s)notes\.txt"):
        server.client.predict(handle_file(str(tmp_path / "notes.txt")), 3, 0, api_name="/reconstruct")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 14, 3), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 100, 3), np.uint8)).save(tmp_path / "wide.png")
    gallery, info, _ = server.client.predict(handle_file(str(tmp_path / "small.png")), 2, 0, api_name="/reconstruct")
    assert len(gallery) == 3 and "14×10 px → resized" in info
    _, info, _ = server.client.predict(handle_file(str(tmp_path / "wide.png")), 2, 0, api_name="/reconstruct")
    assert "100×60 px → central 32×32 crop" in info
    with pytest.raises(AppError, match=r"target class: one of \['cobbles'.*'basalt'"):
        server.client.predict(handle_file(str(tmp_path / "wide.png")), "basalt", 0.3, 2, api_name="/manipulate")


def _jobs(client) -> list[dict]:
    return json.loads(client.predict(api_name="/jobs"))


def test_two_requests_at_once_run_one_after_the_other(server):
    first = server.client.submit(4, 3, 20, 20, "ddim", "", 1.0, api_name="/sample")
    second = server.client.submit(4, 4, 20, 20, "ddim", "", 1.0, api_name="/sample")
    a, b = first.result(timeout=120), second.result(timeout=120)
    last = [j for j in _jobs(server.client) if j["name"] == "sample"][-2:]
    assert [j["status"] for j in last] == ["done", "done"]
    assert last[1]["start"] >= last[0]["end"]  # never two jobs on the model at once
    assert "seed 3" in a[1] and "seed 4" in b[1]
    alone = server.client.predict(4, 4, 20, 20, "ddim", "", 1.0, api_name="/sample")
    assert np.array_equal(np.stack([_png(g) for g in alone[0]]), np.stack([_png(g) for g in b[0]]))


def test_cancel_stops_a_running_job_and_the_next_one_runs(server):
    job = server.client.submit(32, 0, 200, 200, "ddim", "", 1.0, api_name="/sample")
    deadline = time.monotonic() + 60
    while not (job.status().progress_data or job.done()):  # the page's progress bar: network calls counted
        assert time.monotonic() < deadline, "no progress reported"
        time.sleep(0.05)
    progress = job.status().progress_data
    assert progress and 0 <= progress[0].progress < 1 and "sample" in progress[0].desc
    while "cancelling sample" not in server.client.predict(api_name="/cancel"):
        assert time.monotonic() < deadline and not job.done(), "the long job never ran (or finished before cancel)"
        time.sleep(0.05)
    with pytest.raises(AppError, match="cancelled"):
        job.result(timeout=60)
    cancelled = _jobs(server.client)[-1]
    assert cancelled["status"] == "cancelled" and cancelled["calls"] < 400
    assert len(_sample(server.client, seed=1)[0]) == 3


# ---------------------------------------------------------------------------------------------- no latent stage
def test_autoencoder_checkpoint_disables_sampling_with_a_message(pipeline, tmp_path):
    srv = Server([f"ckpt_path={pipeline['ae']}", "run_name=ae"], tmp_path)
    try:
        with pytest.raises(AppError, match="no trained latent DDIM"):
            _sample(srv.client, seed=0)
        config = srv.client.config
        button = [c for c in config["components"] if c.get("props", {}).get("elem_id") == "sample-button"]
        assert button and button[0]["props"]["interactive"] is False
        notes = [c["props"].get("value", "") for c in config["components"] if c["type"] == "markdown"]
        assert any("no trained latent DDIM" in str(v) for v in notes) and any("latents_path" in str(v) for v in notes)
        gallery, info, _ = srv.client.predict(handle_file(str(pipeline["tiles"][0])), 2, 0, api_name="/reconstruct")
        assert len(gallery) == 3 and "PSNR" in info  # the other tabs work
        with pytest.raises(AppError, match="latents_path"):
            srv.client.predict(handle_file(str(pipeline["tiles"][0])), "layered", 0.3, 2, api_name="/manipulate")
        with pytest.raises(AppError, match="z_sem=field is off: this checkpoint has no trained latent DDIM"):
            srv.client.predict(64, 64, 0, 2, "field", None, 2, 16, api_name="/mosaic")
        _, info, png = srv.client.predict(
            40, 40, 0, 2, "shared", handle_file(str(pipeline["tiles"][0])), 2, 16, api_name="/mosaic"
        )
        assert _png(png).shape == (40, 40, 3) and "z_sem shared from the tile" in info  # works without stage 2
        assert any(c.get("props", {}).get("elem_id") == "mosaic-field-disabled" for c in config["components"])
    finally:
        assert srv.stop() == 0


# ---------------------------------------------------------------------------------------------- the page in a browser
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")
def test_page_renders_its_controls_in_headless_chromium_from_local_assets_only(server, tmp_path):
    base = [_chromium(), *CHROMIUM_FLAGS, "--window-size=1280,1000", "--virtual-time-budget=15000"]
    shot, netlog = tmp_path / "explore.png", tmp_path / "net.json"
    subprocess.run(
        [
            *base,
            f"--user-data-dir={tmp_path / 'profile1'}",
            f"--screenshot={shot}",
            f"--log-net-log={netlog}",
            server.url,
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    dom = subprocess.run(
        [*base, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", server.url],
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    ).stdout
    tabs = ("Sample", "Encode &amp; reconstruct", "Interpolate", "Manipulate", "Inpaint", "Mosaic")
    for control in (*tabs, 'id="sample-button"'):
        assert control in dom, f"{control!r} missing from the rendered page"
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.shape == (1000, 1280) and pixels.std() > 5  # something was drawn
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    origin = server.url.rstrip("/")
    page = {
        e["params"]["url"]
        for e in log["events"]
        if names.get(e["type"]) == "URL_REQUEST_START_JOB" and e.get("params", {}).get("initiator") == origin
    }
    assert page, "the net log recorded no request of the page"
    assert all(u.startswith(origin) for u in page), sorted(u for u in page if not u.startswith(origin))
    print(f"screenshot: {shot}")
