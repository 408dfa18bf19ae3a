"""The class-conditional pixel baseline: class embedding added to the time embedding, label dropout, guidance."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_config

from rockgen.lit.checkpoint import load_checkpoint_module
from rockgen.lit.pixel import PixelDiffusion
from rockgen.models import ConditionalUNet, UNetConfig
from rockgen.samplers import guided_model_fn

UNET = dict(
    image_size=16,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[8],
    dropout=0.0,
    embed_channels=32,
    cond_channels=None,
)


def wake(net: torch.nn.Module) -> None:
    """Draw the zero-initialised layers (output conv, ResBlock out convs), which would hide every condition."""
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)


def test_unet_class_embedding_is_optional_and_checked():
    plain = ConditionalUNet(UNetConfig(**UNET))
    assert not any(k.startswith("class_embed") for k in plain.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.full((2,), 7)
    with pytest.raises(ValueError, match="no classes"):
        plain(x, t, cls=torch.zeros(2, dtype=torch.long))
    torch.manual_seed(0)
    net = ConditionalUNet(UNetConfig(**UNET, num_classes=2))
    wake(net)
    torch.testing.assert_close(net(x, t), net(x, t, cls=torch.full((2,), 2)))  # None = null token
    assert not torch.allclose(net(x, t, cls=torch.zeros(2, dtype=torch.long)), net(x, t))


def test_pixel_sample_guidance_equals_the_cfg_combination():
    torch.manual_seed(0)
    m = PixelDiffusion(unet=UNET, diffusion={"num_timesteps": 50}, classes=["a", "b"]).eval()
    wake(m.ema_model)
    x, t = torch.randn(3, 3, 16, 16), torch.full((3,), 20)
    cls = torch.ones(3, dtype=torch.long)
    e_c, e_u = m.ema_model(x, t, cls=cls), m.ema_model(x, t)
    torch.testing.assert_close(m.denoiser_fn("b", 3.0, 3)(x, t), e_u + 3.0 * (e_c - e_u), rtol=0, atol=1e-4)
    torch.testing.assert_close(guided_model_fn(lambda a, b, c: m.ema_model(a, b, cls=c), cls, 2, 1.0)(x, t), e_c)
    a = m.sample(2, "cpu", T=3, seed=0, cls="a", guidance=2)
    assert not torch.equal(a, m.sample(2, "cpu", T=3, seed=0, cls="b", guidance=2))
    with pytest.raises(ValueError, match=r"unknown class 'c'.*\['a', 'b'\]"):
        m.sample(1, "cpu", cls="c")
    plain = PixelDiffusion(unet=UNET, diffusion={"num_timesteps": 50})
    with pytest.raises(ValueError, match="unconditional"):
        plain.sample(1, "cpu", guidance=2.0)


@pytest.mark.slow
def test_train_pixel_with_auto_classes(tmp_path):
    from PIL import Image

    from rockgen.tasks.train import train

    over = [
        "template=demo_pixel",
        *TINY,
        "model.classes=auto",
        "model.evaluation.T=[2]",
        "model.evaluation.grid_images=2",
    ]
    train(compose_config(over, tmp_path))
    m = load_checkpoint_module(tmp_path / "checkpoints" / "last.ckpt")
    assert m.classes == ["cobbles", "fractured", "granite", "gravel", "layered"]
    assert m.sample(1, "cpu", T=2, seed=0, cls="granite", guidance=2).shape == (1, 3, 32, 32)
    grid = Image.open(tmp_path / "images" / "val_step0000003.png")
    assert grid.size == (96 + 4, 5 * (96 + 2) + 2)  # one 96-px sample per class row
