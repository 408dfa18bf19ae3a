"""Behaviour of the rockgen networks: official parameter counts, conditioning, attention and AdaGN maths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rockgen.models import (
    AttentionBlock,
    ConditionalUNet,
    DiffAE,
    EncoderConfig,
    GroupNorm32,
    LatentMLPConfig,
    MLPSkipNet,
    ResBlock,
    SemanticEncoder,
    UNetConfig,
    count_parameters,
    timestep_embedding,
)

# (decoder, encoder) kwargs of the official FFHQ autoencoder templates and their exact parameter counts
# (official table in M: 71.52 + 19.32 = 90.84, 103.87 + 24.67 = 128.55, 138.34 + 30.15 = 168.49).
PRESETS = {
    "rock64": (
        dict(image_size=64, model_channels=64, channel_mult=(1, 2, 4, 8)),
        dict(image_size=64, model_channels=64, channel_mult=(1, 2, 4, 8, 8)),
        (71_518_723, 19_320_512, 90.84),
    ),
    "rock128": (
        dict(image_size=128, model_channels=128, channel_mult=(1, 1, 2, 3, 4)),
        dict(image_size=128, model_channels=128, channel_mult=(1, 1, 2, 3, 4, 4)),
        (103_871_619, 24_673_536, 128.55),
    ),
    "rock256": (
        dict(image_size=256, model_channels=128, channel_mult=(1, 1, 2, 2, 4, 4)),
        dict(image_size=256, model_channels=128, channel_mult=(1, 1, 2, 2, 4, 4, 4)),
        (138_341_891, 30_150_400, 168.49),
    ),
}

TINY_UNET = dict(
    image_size=32,
    model_channels=32,
    channel_mult=(1, 2),
    attention_resolutions=(16,),
    cond_channels=64,
    embed_channels=64,
)
TINY_ENC = dict(image_size=32, model_channels=32, channel_mult=(1, 2), attention_resolutions=(16,), out_channels=64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _perturb(module: torch.nn.Module, std: float = 0.05) -> None:
    """Give every parameter random values so zero-initialised branches stop hiding the maths."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_counts_match_official(name):
    dec, enc, (n_dec, n_enc, total_m) = PRESETS[name]
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = DiffAE(EncoderConfig(**enc), UNetConfig(**dec))
    assert count_parameters(model.decoder) == n_dec
    assert count_parameters(model.encoder) == n_enc
    assert round(count_parameters(model) / 1e6, 2) == total_m


def test_state_dict_keys_follow_official_names():
    unet = ConditionalUNet(UNetConfig(**TINY_UNET))
    keys = set(unet.state_dict())
    for key in (
        "time_embed.0.weight",  # official: time_embed.time_embed.0.weight
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.2.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.cond_emb_layers.1.weight",
        "input_blocks.1.0.out_layers.3.weight",
        "input_blocks.4.1.qkv.weight",
        "middle_block.1.proj_out.weight",
        "output_blocks.0.0.skip_connection.weight",
        "out.2.weight",
    ):
        assert key in keys, key
    assert unet.state_dict()["input_blocks.4.1.qkv.weight"].shape == (192, 64, 1)  # Conv1d as official


def test_tiny_autoencoder_shapes_zero_init_and_conditioning():
    enc, dec = SemanticEncoder(EncoderConfig(**TINY_ENC)), ConditionalUNet(UNetConfig(**TINY_UNET))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    t = torch.tensor([0, 999])
    z = enc(x)
    assert z.shape == (2, 64)
    eps = dec(x, t, z)
    assert eps.shape == x.shape
    assert torch.count_nonzero(eps) == 0  # zero-init output conv: the untrained net predicts ε̂ = 0

    _perturb(dec)
    dec.eval()  # no dropout, so a difference can only come from z_sem
    with torch.no_grad():
        a, b = dec(x, t, z), dec(x, t, torch.randn_like(z))
    assert not torch.allclose(a, b, atol=1e-4), "z_sem must change the decoder output"


def test_gradients_reach_encoder_through_decoder():
    enc, dec = SemanticEncoder(EncoderConfig(**TINY_ENC)), ConditionalUNet(UNetConfig(**TINY_UNET))
    _perturb(dec)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    loss = F.mse_loss(dec(x, torch.tensor([10, 500]), enc(x)), torch.randn_like(x))
    loss.backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def _legacy_attention(x: torch.Tensor, block: AttentionBlock) -> torch.Tensor:
    """Independent float64 re-statement of the official AttentionBlock + QKVAttentionLegacy."""
    b, c, h, w = x.shape
    x64 = x.double().reshape(b, c, h * w)
    normed = F.group_norm(x64, 32, block.norm.weight.double(), block.norm.bias.double(), block.norm.eps)
    qkv = F.conv1d(normed, block.qkv.weight.double(), block.qkv.bias.double())  # (B, 3C, L)
    heads, d = block.num_heads, c // block.num_heads
    q, k, v = qkv.reshape(b * heads, 3 * d, h * w).split(d, dim=1)  # legacy layout [head][q|k|v][d]
    scale = 1 / math.sqrt(math.sqrt(d))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, h * w)
    out = F.conv1d(a, block.proj_out.weight.double(), block.proj_out.bias.double())
    return (x64 + out).reshape(b, c, h, w)


@pytest.mark.parametrize("num_heads", [1, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_sdpa_attention_equals_legacy_qkv_attention(num_heads, channels_last):
    block = AttentionBlock(64, num_heads=num_heads)
    _perturb(block, std=0.2)  # proj_out is zero-initialised; randomise it too
    x = torch.randn(2, 64, 8, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(block(x).double(), _legacy_attention(x, block), rtol=1e-5, atol=1e-5)


def test_timestep_embedding_closed_form_cos_first():
    t = torch.tensor([0, 1, 37, 999])
    dim, half = 8, 4
    emb = timestep_embedding(t, dim)
    assert emb.dtype == torch.float32 and emb.shape == (4, dim)
    for row, step in zip(emb, t.tolist(), strict=True):
        for i in range(half):
            freq = 10000 ** (-i / half)
            assert row[i].item() == pytest.approx(math.cos(step * freq), abs=1e-4)
            assert row[half + i].item() == pytest.approx(math.sin(step * freq), abs=1e-4)
    assert torch.equal(timestep_embedding(t.float(), dim), emb)  # float t gives the same
    assert timestep_embedding(t, 7)[:, -1].abs().sum() == 0  # odd width: zero pad column


def test_resblock_adagn_matches_hand_written_formula():
    block = ResBlock(32, 64, emb_channels=16, cond_channels=8, dropout=0.0).eval()
    _perturb(block, std=0.1)
    x, emb, cond = torch.randn(2, 32, 8, 8), torch.randn(2, 16), torch.randn(2, 8)

    gn_in, conv_in = block.in_layers[0], block.in_layers[2]
    gn_out, conv_out = block.out_layers[0], block.out_layers[3]
    h = conv_in(F.silu(F.group_norm(x, 32, gn_in.weight, gn_in.bias)))
    t_s, t_b = F.linear(F.silu(emb), block.emb_layers[1].weight, block.emb_layers[1].bias).chunk(2, dim=1)
    z_s = F.linear(F.silu(cond), block.cond_emb_layers[1].weight, block.cond_emb_layers[1].bias)
    h = F.group_norm(h, 32, gn_out.weight, gn_out.bias)
    h = h * (1 + t_s[:, :, None, None]) + t_b[:, :, None, None]  # time AdaGN
    h = h * (1 + z_s[:, :, None, None])  # z_sem scale
    expected = block.skip_connection(x) + conv_out(F.silu(h))
    torch.testing.assert_close(block(x, emb, cond), expected, rtol=1e-5, atol=1e-5)


def test_encoder_resblock_is_official_single_conv():
    block = ResBlock(32, 32, emb_channels=None, down=True)
    _perturb(block)
    assert block.out_layers is None and block.emb_layers is None
    x = torch.randn(2, 32, 8, 8)
    gn, conv = block.in_layers[0], block.in_layers[2]
    expected = F.avg_pool2d(x, 2) + conv(F.avg_pool2d(F.silu(gn(x)), 2))
    torch.testing.assert_close(block(x), expected)


def test_groupnorm32_bf16_equals_float32_then_cast():
    norm = GroupNorm32(64)
    _perturb(norm)
    x = torch.randn(2, 64, 4, 4).bfloat16()
    expected = F.group_norm(x.float(), 32, norm.weight, norm.bias).bfloat16()
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=0)


def test_channels_last_bf16_autocast_close_to_float32():
    dec = ConditionalUNet(UNetConfig(**TINY_UNET)).eval()
    _perturb(dec)
    x, t, z = torch.randn(2, 3, 32, 32), torch.tensor([3, 700]), torch.randn(2, 64)
    with torch.no_grad():
        ref = dec(x, t, z)
        dec_cl = dec.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = dec_cl(x.contiguous(memory_format=torch.channels_last), t, z)
    assert out.is_contiguous(memory_format=torch.channels_last)
    rel_rms = (out.float() - ref).square().mean().sqrt() / ref.square().mean().sqrt()
    assert rel_rms < 0.03  # bf16 has ~3 significant digits; a layout or cast bug gives O(1)


def test_gradient_checkpointing_gives_same_gradients():
    x, t, z = torch.randn(2, 3, 32, 32), torch.tensor([3, 700]), torch.randn(2, 64)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(1)
        dec = ConditionalUNet(UNetConfig(**TINY_UNET, gradient_checkpointing=ckpt))
        _perturb(dec)
        dec.train()
        torch.manual_seed(2)  # same dropout masks; non-reentrant checkpoint replays the RNG state
        dec(x, t, z).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in dec.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_latent_mlp_default_size_and_shape():
    net = MLPSkipNet(LatentMLPConfig())
    assert count_parameters(net) == 54_109_696  # official 54.11 M
    out = net(torch.randn(3, 512), torch.tensor([0, 500, 999]))
    assert out.shape == (3, 512)


def test_latent_mlp_shared_timestep_shortcut_matches_per_row_path():
    """Sampling (no grad, one t for the batch) runs the time MLP on one row; the result equals the per-row path."""
    torch.manual_seed(0)
    net = MLPSkipNet(LatentMLPConfig(num_channels=16, hidden_channels=32, num_layers=4, time_embed_channels=24))
    net = net.double()
    x = torch.randn(5, 16, dtype=torch.float64)
    t = torch.full((5,), 321)
    with torch.no_grad():
        fast = net(x, t)
        rows = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(5)])  # batch 1: no shortcut taken
    with torch.enable_grad():
        graded = net(x, t)  # training path: per-row time MLP
    torch.testing.assert_close(fast, rows, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, graded.detach(), rtol=1e-12, atol=1e-12)


def test_unconditional_unet_for_pixel_baseline():
    dec = ConditionalUNet(UNetConfig(**{**TINY_UNET, "cond_channels": None}))
    assert not any("cond_emb_layers" in k for k in dec.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert dec(x, torch.tensor([1, 2])).shape == x.shape
    with pytest.raises(ValueError, match="unconditional"):
        dec(x, torch.tensor([1, 2]), torch.randn(2, 64))
    with pytest.raises(ValueError, match="cond"):
        ConditionalUNet(UNetConfig(**TINY_UNET))(x, torch.tensor([1, 2]))


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (ConditionalUNet, dict(image_size=36, channel_mult=(1, 1, 2, 2)), "image_size"),
        (ConditionalUNet, dict(model_channels=48), "model_channels"),
        (ConditionalUNet, dict(attention_resolutions=(12,)), "attention_resolutions"),
        (ConditionalUNet, dict(dropout=1.5), "dropout"),
        (ConditionalUNet, dict(num_heads=3), "num_heads"),
        (SemanticEncoder, dict(channel_mult=()), "channel_mult"),
        (SemanticEncoder, dict(image_size=33), "image_size"),
        (MLPSkipNet, dict(num_layers=1), "num_layers"),
    ],
)
def test_bad_config_raises_value_error_naming_field(cls, kwargs, field):
    base = {ConditionalUNet: TINY_UNET, SemanticEncoder: TINY_ENC, MLPSkipNet: {}}[cls]
    cfg_cls = {ConditionalUNet: UNetConfig, SemanticEncoder: EncoderConfig, MLPSkipNet: LatentMLPConfig}[cls]
    with pytest.raises(ValueError, match=field):
        cls(cfg_cls(**{**base, **kwargs}))


def test_configs_from_mappings_with_lists():
    # Hydra hands over a DictConfig with ListConfig sequences instead of tuples.
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({**TINY_UNET, "channel_mult": [1, 2], "attention_resolutions": [16]})
    dec = ConditionalUNet(cfg)
    assert dec.cfg.channel_mult == (1, 2)  # normalised to plain tuples
    assert dec(torch.randn(1, 3, 32, 32), torch.tensor([5]), torch.randn(1, 64)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown fields"):
        ConditionalUNet({**TINY_UNET, "chanel_mult": [1, 2]})
    with pytest.raises(ValueError, match="cond_channels"):
        DiffAE(EncoderConfig(**TINY_ENC), UNetConfig(**{**TINY_UNET, "cond_channels": 32}))
