"""Known-region replacement: known pixels kept exactly, unknown ones follow the sampler; bad masks refused."""

import pytest
import torch

from rockgen.diffusion import Schedule
from rockgen.inpaint import check_mask, fill_for_encoding, inpaint_sample
from rockgen.samplers import ddim_sample


def _pointwise(schedule):
    abar = schedule.alphas_cumprod

    def fn(x, t):
        a = abar[t].float().view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * 0.2) / (a * 0.25 + 1 - a)

    return fn


def _mask(h=16, w=16):
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    m[..., 4:11, 3:9] = True
    return m


def test_known_pixels_are_kept_and_unknown_follow_ddim():
    sch = Schedule.from_config("linear", 1000)
    img = torch.rand(1, 3, 16, 16) * 2 - 1
    m = _mask()
    out = inpaint_sample(_pointwise(sch), img, m, sch, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[~m.expand_as(out)], img[~m.expand_as(img)])
    # a pointwise model couples no pixels: the hole is plain DDIM from the same starting noise
    x_T = torch.randn(img.shape, generator=torch.Generator().manual_seed(0))
    ref = ddim_sample(_pointwise(sch), x_T, sch, 8)
    torch.testing.assert_close(out[m.expand_as(out)], ref[m.expand_as(ref)], atol=1e-5, rtol=1e-5)


def test_an_image_model_fills_the_hole_from_its_surroundings():
    """With a denoiser that averages over the image, the hole takes the colour of the known pixels."""
    sch = Schedule.from_config("linear", 1000)
    img = torch.full((1, 3, 16, 16), 0.5)
    m = _mask()

    def x0_mean(x, t):  # x̂_0 = spatial mean of x̂_0 candidates (a 'smooth image' prior), as an x0-prediction
        a = sch.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x / a.sqrt()).mean((2, 3), keepdim=True).expand_as(x).clamp(-1, 1)

    out = inpaint_sample(x0_mean, img, m, sch, 20, resample=3, prediction="x0",
                         generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert (out[m.expand_as(out)] - 0.5).abs().mean() < 0.1


@pytest.mark.parametrize(
    ("mask", "msg"),
    [
        (torch.zeros(1, 1, 16, 12, dtype=torch.bool), "must be the same size"),
        (torch.zeros(1, 1, 16, 16, dtype=torch.bool), "all known"),
        (torch.ones(1, 1, 16, 16, dtype=torch.bool), "all unknown"),
    ],
)
def test_bad_masks(mask, msg):
    with pytest.raises(ValueError, match=msg):
        check_mask(mask, torch.zeros(1, 3, 16, 16))


def test_fill_for_encoding_uses_known_pixels_only():
    img = torch.zeros(1, 3, 4, 4)
    img[..., :2, :] = 1.0
    m = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    m[..., 2:, :] = True
    f = fill_for_encoding(img, m)
    assert torch.all(f == 1.0)
