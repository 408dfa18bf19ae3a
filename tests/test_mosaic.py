"""MultiDiffusion mosaics: window layout, exact fusion of a pointwise model, resume, bounded batches, bad input."""

import pytest
import torch

from rockgen.diffusion import Schedule
from rockgen.mosaic import MosaicModel, field_codes, sample_mosaic, window_origins, window_weight
from rockgen.samplers import get_sampler


def test_window_origins_cover_with_the_overlap():
    for size, win, ov in [(100, 32, 8), (32, 32, 0), (77, 16, 15), (1000, 64, 16)]:
        o = window_origins(size, win, ov)
        assert o[0] == 0 and o[-1] == size - win
        assert all(b - a <= win - ov for a, b in zip(o, o[1:], strict=False))  # overlaps >= ov


@pytest.mark.parametrize(
    ("size", "win", "ov", "msg"),
    [(20, 32, 8, "smaller than one window"), (64, 32, 32, "overlap must be"), (64, 32, 40, "overlap must be")],
)
def test_bad_layouts(size, win, ov, msg):
    with pytest.raises(ValueError, match=msg):
        window_origins(size, win, ov)


def test_fusion_of_a_pointwise_model_is_exact_and_batches_are_bounded():
    seen = []

    def fn(x, t, idx):
        seen.append(len(x))
        return 2 * x + t.view(-1, 1, 1, 1) * 1e-3

    m = MosaicModel(fn, 70, 90, 16, 5, window_batch=7)
    x = torch.randn(1, 3, 70, 90)
    out = m(x, torch.tensor([10]))
    torch.testing.assert_close(out, 2 * x + 1e-2)
    assert max(seen) <= 7 and sum(seen) == len(m.origins)


def test_weights_taper_and_constant_windows_average():
    w = window_weight(16, 4)
    assert w[8, 8] == 1 and w[0, 0] < 1e-2 and torch.all(w > 0)
    m = MosaicModel(lambda x, t, idx: idx.view(-1, 1, 1, 1).float().expand_as(x), 40, 40, 16, 4)
    out = m(torch.zeros(1, 3, 40, 40), torch.tensor([0]))
    assert out.min() >= 0 and out.max() <= len(m.origins) - 1
    assert torch.allclose(out[0, :, 2, 2], torch.zeros(3))  # only window 0 covers the corner


def _gauss_fn(schedule):
    abar = schedule.alphas_cumprod

    def fn(x, t, idx):
        a = abar[t].float().view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * 0.2) / (a * 0.25 + 1 - a)

    return fn


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "unipc"])
def test_mosaic_of_a_pointwise_model_equals_whole_canvas_sampling_and_resumes(tmp_path, sampler):
    sch = Schedule.from_config("linear", 1000)
    fn = _gauss_fn(sch)
    x_T = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    ref = get_sampler(sampler)(lambda x, t: fn(x, t, None), x_T, sch, 6, clip_x0=True)
    kw = dict(sampler=sampler, progress=False)
    full = sample_mosaic(MosaicModel(fn, 40, 56, 16, 4), x_T, sch, 6, **kw)
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)

    calls = {"n": 0}

    def crashing(x, t, idx):
        calls["n"] += 1
        if calls["n"] > 3 * 2:  # fails in step 4 (2 batches of windows per step)
            raise KeyboardInterrupt
        return fn(x, t, idx)

    state = tmp_path / "m.partial.pt"
    with pytest.raises(KeyboardInterrupt):
        sample_mosaic(MosaicModel(crashing, 40, 56, 16, 4, window_batch=9), x_T, sch, 6, state_path=state,
                      meta={"k": 1}, **kw)  # fmt: skip
    saved = torch.load(state, weights_only=True)["state"]
    assert saved["sampler"] == sampler and saved["next"] == (2 if sampler == "ddim" else 3)  # 3 steps done
    with pytest.raises(ValueError, match="partial mosaic of other settings"):
        sample_mosaic(MosaicModel(fn, 40, 56, 16, 4), x_T, sch, 6, state_path=state, meta={"k": 2}, **kw)
    other = "unipc" if sampler != "unipc" else "ddim"
    with pytest.raises(ValueError, match="partial mosaic of other settings"):
        sample_mosaic(MosaicModel(fn, 40, 56, 16, 4), x_T, sch, 6, state_path=state, meta={"k": 1}, sampler=other)
    resumed = sample_mosaic(MosaicModel(fn, 40, 56, 16, 4), x_T, sch, 6, state_path=state, meta={"k": 1}, **kw)
    torch.testing.assert_close(resumed, ref, atol=1e-5, rtol=1e-5)


def test_field_codes_pass_through_anchors_and_reproduce_linear_fields():
    gy, gx = 3, 4
    ys, xs = torch.meshgrid(torch.arange(gy, dtype=torch.float64), torch.arange(gx, dtype=torch.float64), indexing="ij")
    anchors = torch.stack([ys.flatten(), xs.flatten(), torch.randn(gy * gx, dtype=torch.float64)], 1)
    centres = torch.stack([ys.flatten() * 10 + 5, xs.flatten() * 10 + 5], 1)
    z = field_codes(anchors, (gy, gx), centres)
    torch.testing.assert_close(z, anchors.float(), atol=1e-5, rtol=0)
    mid = torch.tensor([[10.0, 15.0], [20.0, 25.0]], dtype=torch.float64)  # between anchors
    z = field_codes(anchors, (gy, gx), torch.cat([centres[:1], centres[-1:], mid]))
    torch.testing.assert_close(z[2:, :2], torch.tensor([[0.5, 1.0], [1.5, 2.0]]), atol=1e-5, rtol=0)
