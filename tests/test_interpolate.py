"""Interpolation in DiffAE's latent space: slerp, image loading, the frames' ends, and ``task=interpolate``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import compose_config
from latent_models import demo_tiles, random_diffae, save_checkpoint
from PIL import Image

from rockgen.data.images import ImageReadError
from rockgen.latent_ops import interpolate, lerp, load_image_tensor, slerp
from rockgen.tasks import run_task

T = 3  # DDIM steps: enough to exercise inversion and rendering, fast on CPU


def _angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.arccos((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))).double()


# ---------------------------------------------------------------------------------------------- slerp
def test_slerp_returns_the_ends_exactly():
    a, b = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    assert torch.equal(slerp(a, b, 0.0), a)
    assert torch.equal(slerp(a, b, 1.0), b)


def test_slerp_closed_form_on_the_unit_circle():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    w = torch.linspace(0, 1, 7)
    expected = torch.stack([torch.cos(w * math.pi / 2), torch.sin(w * math.pi / 2)], dim=1)
    torch.testing.assert_close(slerp(a, b, w), expected, atol=1e-6, rtol=0)


def test_slerp_keeps_unit_norm_and_moves_at_constant_angular_speed():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(1, 64, generator=g, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.randn(1, 64, generator=g, dtype=torch.float64), dim=1)
    theta = _angle(a, b)
    w = torch.linspace(0, 1, 11, dtype=torch.float64)
    s = slerp(a, b, w)
    torch.testing.assert_close(s.norm(dim=1), torch.ones(11, dtype=torch.float64))
    torch.testing.assert_close(_angle(a.expand_as(s), s), w * theta, atol=1e-6, rtol=0)
    torch.testing.assert_close(_angle(s, b.expand_as(s)), (1 - w) * theta, atol=1e-6, rtol=0)


def test_slerp_treats_each_sample_separately_and_flattens_it():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    both = slerp(a, b, torch.tensor([0.3, 0.7]))
    for i, w in enumerate((0.3, 0.7)):
        torch.testing.assert_close(both[i : i + 1], slerp(a[i : i + 1], b[i : i + 1], w))
    # an end of batch size 1 broadcasts against one weight per output
    assert slerp(a[:1], b[:1], torch.linspace(0, 1, 5)).shape == (5, 3, 4, 4)


def test_slerp_falls_back_to_lerp_for_parallel_vectors():
    a = torch.randn(1, 8)
    for b in (2 * a, -a):  # parallel and antiparallel: sin θ = 0
        out = slerp(a, b, torch.tensor([0.25, 0.5]))
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, lerp(a, b, torch.tensor([0.25, 0.5])))


def test_slerp_keeps_gaussian_noise_at_its_norm_where_lerp_shrinks_it():
    # why x_T is slerped: two independent N(0, I) draws are nearly orthogonal; their lerp midpoint has
    # norm ≈ √(n/2), an unlikely x_T, while the slerp midpoint stays at ≈ √n
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, 3 * 32 * 32, generator=g), torch.randn(1, 3 * 32 * 32, generator=g)
    n = a.shape[1]
    assert abs(slerp(a, b, 0.5).norm() / math.sqrt(n) - 1) < 0.05
    assert abs(lerp(a, b, torch.tensor([0.5])).norm() / math.sqrt(n / 2) - 1) < 0.05


def test_slerp_rejects_unbatched_or_mismatched_inputs():
    with pytest.raises(ValueError, match="batched"):
        slerp(torch.randn(4), torch.randn(4), 0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        slerp(torch.randn(1, 4), torch.randn(1, 5), 0.5)


# ---------------------------------------------------------------------------------------------- image files
def test_load_image_tensor_crops_at_native_resolution_or_resizes(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "tile.png")
    x = load_image_tensor(tmp_path / "tile.png", 32)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    window = pixels[4:36, 14:46].transpose(2, 0, 1) / 127.5 - 1  # the central 32x32 window, untouched
    np.testing.assert_allclose(x[0].numpy(), window, atol=1e-6)
    resized = load_image_tensor(tmp_path / "tile.png", 32, fit="resize")  # 40x60 -> 32x48 -> centre 32x32
    assert resized.shape == (1, 3, 32, 32) and not torch.allclose(resized, x)
    assert -1 <= float(resized.min()) and float(resized.max()) <= 1
    Image.fromarray(pixels[:16, :20]).save(tmp_path / "small.png")
    assert load_image_tensor(tmp_path / "small.png", 32).shape == (1, 3, 32, 32)  # smaller: enlarged


def test_load_image_tensor_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image_tensor(tmp_path / "nope.png", 32)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_image_tensor(tmp_path / "broken.png", 32)
    with pytest.raises(ValueError, match="fit"):
        load_image_tensor(tmp_path / "broken.png", 32, fit="stretch")


# ---------------------------------------------------------------------------------------------- interpolation
@pytest.fixture(scope="module")
def model():
    return random_diffae()


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return demo_tiles(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def ends(model, tiles):
    return (
        load_image_tensor(tiles["cobbles"][0], model.image_size),
        load_image_tensor(tiles["layered"][0], model.image_size),
    )


def _reconstruction(model, x):
    z = model.encode(x)
    return model.render(model.encode_stochastic(x, z, T=T), z, T=T).cpu()


def test_interpolation_ends_are_the_ends_inverted_reconstructions(model, ends):
    x_a, x_b = ends
    frames = interpolate(model, x_a, x_b, frames=4, T=T)
    assert frames.shape == (4, 3, model.image_size, model.image_size)
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    rec_a, rec_b = _reconstruction(model, x_a), _reconstruction(model, x_b)
    # the two reconstructions are far apart, so swapped or shifted ends cannot pass the tolerance below
    # (batched rendering differs from single-image rendering only by float rounding)
    assert (rec_a - rec_b).abs().mean() > 0.1
    torch.testing.assert_close(frames[:1], rec_a, atol=1e-2, rtol=0)
    torch.testing.assert_close(frames[-1:], rec_b, atol=1e-2, rtol=0)
    inner = frames[1:-1]
    assert all(
        (inner[i] - rec_a[0]).abs().mean() > 0.01 and (inner[i] - rec_b[0]).abs().mean() > 0.01
        for i in range(len(inner))
    )


def test_interpolation_midpoint_lerps_z_sem_and_slerps_x_T(model, ends):
    x_a, x_b = ends
    mid = interpolate(model, x_a, x_b, frames=3, T=T)[1:2]
    x = torch.cat([x_a, x_b])
    z = model.encode(x)
    x_T = model.encode_stochastic(x, z, T=T)  # each end inverted with its own z_sem
    expected = model.render(slerp(x_T[:1], x_T[1:], 0.5), (z[:1] + z[1:]) / 2, T=T).cpu()
    torch.testing.assert_close(mid, expected, atol=1e-2, rtol=0)
    # z_sem matters: the lerped x_T with only a's code renders something else
    assert (model.render(slerp(x_T[:1], x_T[1:], 0.5), z[:1], T=T).cpu() - expected).abs().mean() > 0.01


def test_interpolation_needs_two_frames_and_one_image_per_end(model, ends):
    x_a, x_b = ends
    with pytest.raises(ValueError, match="frames"):
        interpolate(model, x_a, x_b, frames=1, T=T)
    with pytest.raises(ValueError, match="one image per end"):
        interpolate(model, torch.cat([x_a, x_a]), x_b, frames=3, T=T)


# ---------------------------------------------------------------------------------------------- the task
@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model.ckpt")


def test_interpolate_task_writes_strip_and_looping_gif(ckpt, tiles, tmp_path, capsys):
    cfg = compose_config(
        [
            "task=interpolate",
            f"ckpt_path={ckpt}",
            f"image_a={tiles['cobbles'][0]}",
            f"image_b={tiles['granite'][1]}",
            "frames=4",
            f"T={T}",
            "device=cpu",
        ],
        tmp_path,
    )
    out = run_task(cfg)
    png, gif = tmp_path / "interpolation.png", tmp_path / "interpolation.gif"
    assert out["png"] == png and out["gif"] == gif
    s, pad = 32, 2
    with Image.open(png) as im:
        assert im.size == (6 * (s + pad) + pad, s + 2 * pad)  # input a | 4 frames | input b
    with Image.open(gif) as im:
        assert im.size == (s, s) and im.n_frames == 6 and im.info.get("loop") == 0  # 4 frames + 2 back
    printed = capsys.readouterr().out
    assert str(png) in printed and str(gif) in printed


def test_interpolate_task_target_size_upscales_strip_and_gif(ckpt, tiles, tmp_path):
    a, b = tiles["gravel"][0], tiles["fractured"][0]
    overrides = ["task=interpolate", f"ckpt_path={ckpt}", f"image_a={a}", f"image_b={b}", "frames=2", "T=2"]
    run_task(compose_config([*overrides, "device=cpu", "target_size=48", "show_inputs=false"], tmp_path))
    with Image.open(tmp_path / "interpolation.png") as im:
        assert im.size == (2 * 50 + 2, 52)
    with Image.open(tmp_path / "interpolation.gif") as im:
        assert im.size == (48, 48) and im.n_frames == 2


def test_interpolate_task_run_name_gets_a_timestamp(tmp_path):
    cfg = compose_config(["task=interpolate"], tmp_path)
    assert cfg.run_name.startswith("interpolate-") and cfg.frames == 8 and cfg.T == 50


def test_interpolate_task_errors_name_the_setting(ckpt, tiles, tmp_path):
    base = ["task=interpolate", f"T={T}", "device=cpu", f"image_b={tiles['cobbles'][0]}"]
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        run_task(
            compose_config([*base, f"ckpt_path={tmp_path / 'none.ckpt'}", f"image_a={tiles['cobbles'][0]}"], tmp_path)
        )
    with pytest.raises(ValueError, match="ckpt_path"):
        run_task(compose_config([*base, f"image_a={tiles['cobbles'][0]}"], tmp_path))
    with pytest.raises(FileNotFoundError, match="image_a.*missing.png"):
        run_task(compose_config([*base, f"ckpt_path={ckpt}", f"image_a={tmp_path / 'missing.png'}"], tmp_path))
