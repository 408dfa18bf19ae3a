"""Speed levers give the NCHW eager path's outputs (fp32, 1e-4): channels_last (with its own GroupNorm backward
at >= 32² pixels), EMA nets in eval mode (both on by default); the frozen TorchScript decoder of
model.evaluation.inference_compile=freeze and torch.compile (opt-in)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from rockgen.models import ConditionalUNet, EncoderConfig, SemanticEncoder, UNetConfig

UNET = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,), cond_channels=64)
ENC = EncoderConfig(
    image_size=16, model_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(8,), out_channels=64
)


def _nets(size: int = 16):
    torch.manual_seed(0)
    attn = (size // 2,)
    dec = ConditionalUNet(replace(UNET, image_size=size, attention_resolutions=attn)).eval()
    enc = SemanticEncoder(replace(ENC, image_size=size, attention_resolutions=attn)).eval()
    with torch.no_grad():  # zero-initialised output convs would make every comparison trivially 0 == 0
        for p in [*dec.parameters(), *enc.parameters()]:
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return dec, enc


def _inputs(size: int = 16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, size, size, generator=g)
    return x, torch.tensor([3, 500, 999])


@pytest.mark.parametrize("size", [16, 32])  # 32: the 32² levels take _GroupNormChannelsLast in backward
def test_channels_last_equals_nchw_forward_and_gradients(size):
    dec, enc = _nets(size)
    x, t = _inputs(size)
    dec_cl, enc_cl = (copy.deepcopy(m).to(memory_format=torch.channels_last) for m in (dec, enc))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    z, z_cl = enc(x), enc_cl(x_cl)
    torch.testing.assert_close(z_cl, z, atol=1e-4, rtol=1e-4)
    out, out_cl = dec(x, t, cond=z), dec_cl(x_cl, t, cond=z_cl)
    assert out.abs().mean() > 1e-3
    torch.testing.assert_close(out_cl, out, atol=1e-4, rtol=1e-4)
    out.square().mean().backward()
    out_cl.square().mean().backward()
    named = [*dec.named_parameters(), *enc.named_parameters()]
    for (name, p), p_cl in zip(named, [*dec_cl.parameters(), *enc_cl.parameters()], strict=True):
        torch.testing.assert_close(p_cl.grad, p.grad, atol=1e-4, rtol=1e-3, msg=name)


@pytest.mark.slow
def test_torch_compile_equals_eager():
    dec, enc = _nets()
    x, t = _inputs()
    with torch.no_grad():
        z = enc(x)
        ref = dec(x, t, cond=z)
        got = torch.compile(dec)(x, t, cond=torch.compile(enc)(x))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_channels_last_group_norm_backward_equals_float64_reference():
    """The channels_last GroupNorm backward (large images, D = C/G of 1 and 2) against float64 autograd."""
    from rockgen.models.nn import _CL_BACKWARD_MIN_PIXELS, GroupNorm32

    side = int(_CL_BACKWARD_MIN_PIXELS**0.5)
    for channels in (32, 64):
        torch.manual_seed(channels)
        norm = GroupNorm32(channels)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
        x = (torch.randn(2, channels, side, side) * 3 + 1).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        dy = torch.randn(2, channels, side, side).contiguous(memory_format=torch.channels_last)
        y = norm(x)
        assert y.grad_fn is not None and "GroupNormChannelsLast" in type(y.grad_fn).__name__
        grads = torch.autograd.grad(y, (x, norm.weight, norm.bias), dy)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
        x64 = x.detach().double().contiguous().requires_grad_(True)
        w64, b64 = (p.detach().double().requires_grad_(True) for p in (norm.weight, norm.bias))
        y64 = torch.nn.functional.group_norm(x64, 32, w64, b64, norm.eps)
        ref = torch.autograd.grad(y64, (x64, w64, b64), dy.double())
        torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=1e-5)
        for got, want, name in zip(grads, ref, ("x", "weight", "bias"), strict=True):
            torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4, msg=name)
        # an NCHW gradient arriving at a channels_last output works too
        got_x = torch.autograd.grad(norm(x), x, dy.contiguous())[0]
        torch.testing.assert_close(got_x.double(), ref[0], atol=1e-4, rtol=1e-4)


def test_ema_nets_stay_in_eval_mode_under_train():
    """LitModel.train() (Lightning calls it every epoch) leaves the EMA nets in eval mode: rendering between
    training steps is deterministic and dropout-free (the rock presets' decoders have dropout 0.1)."""
    from latent_models import random_diffae

    from rockgen.models.blocks import ResBlock

    model = random_diffae(seed=3)
    blocks = [m for m in model.ema_model.decoder.modules() if isinstance(m, ResBlock)]
    for block in blocks:  # the demo preset has none: give every decoder block some
        block.dropout = 0.3
    model.train()
    assert model.model.training and not any(m.training for m in model.ema_model.modules())
    noise = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, model.ema_model.decoder.cfg.cond_channels, generator=torch.Generator().manual_seed(1))
    first, second = model.render(noise, cond, T=2), model.render(noise, cond, T=2)
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    torch.testing.assert_close(model.eval().render(noise, cond, T=2), first, atol=1e-6, rtol=0)


def test_frozen_inference_equals_nchw_eager_render_and_inversion():
    """model.evaluation.inference_compile=freeze (TorchScript trace + freeze of the EMA decoder, channels_last)
    renders, inverts and renders seamless tiles like the eager NCHW decoder (fp32, 1e-4); the graph is traced once
    per input signature and again after the weights change in place (an EMA update)."""
    from latent_models import random_diffae

    from rockgen.models.inference import inference_fn

    fast = random_diffae(seed=4)
    fast.eval_conf = replace(fast.eval_conf, inference_compile="freeze")
    eager = copy.deepcopy(fast).to(memory_format=torch.contiguous_format)
    eager.eval_conf, eager.memory_format = replace(fast.eval_conf, inference_compile="none"), torch.contiguous_format
    assert fast.memory_format == torch.channels_last
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, fast.image_size, fast.image_size, generator=g) * 2 - 1
    noise = torch.randn(x.shape, generator=g)
    cond = eager.encode(x)
    frozen = inference_fn(fast.ema_model.decoder, "freeze")

    def check(what: str, **kw) -> None:
        if what == "render":
            ref, out = eager.render(noise, cond, T=3, **kw), fast.render(noise, cond, T=3, **kw)
        else:
            ref, out = eager.encode_stochastic(x, cond, T=3), fast.encode_stochastic(x, cond, T=3)
        assert ref.std() > 1e-2
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, msg=what)

    check("render")
    check("invert")  # same input signature and weights: no new trace
    assert frozen.builds == 1
    check("render", seamless=True)  # circular padding: a graph of its own
    assert frozen.builds == 2
    with torch.no_grad():  # an EMA step changes the weights in place: the frozen constants must follow
        for m in (fast, eager):
            for p in m.ema_model.decoder.parameters():
                p.mul_(0.9).add_(0.01)
    check("render")
    assert frozen.builds == 3
    # gradients through the sampler (render(grad=True)) use the eager decoder
    z = cond.clone().requires_grad_(True)
    fast.render(noise, z, T=2, grad=True).mean().backward()
    assert z.grad is not None and frozen.builds == 3


def test_inference_compile_rejects_unknown_mode():
    from rockgen.config import EvalConf

    with pytest.raises(ValueError, match="model.evaluation.inference_compile"):
        EvalConf(inference_compile="jit")
