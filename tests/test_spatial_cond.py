"""The optional spatial z_sem path (decoder ``spatial_cond``, encoder ``head=flatten``): off = the official nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rockgen.models import ConditionalUNet, EncoderConfig, SemanticEncoder, UNetConfig

# lowest decoder resolution 16 // 2 = 8 with 64 channels; encoder down to 4 x 4
UNET = dict(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
            cond_channels=6, embed_channels=32, dropout=0.0)  # fmt: skip
ENC = dict(image_size=16, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(),
           out_channels=6)  # fmt: skip


def _inputs(b: int = 3):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(b, 3, 16, 16, generator=g) * 2 - 1
    return x, torch.tensor([5, 500, 999][:b]), torch.randn(b, 6, generator=g)


def _perturb(module: torch.nn.Module, std: float = 0.05) -> None:
    """Random values everywhere, so zero-initialised branches (output conv, projection) stop hiding the maths."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("side", [8, 4, 2])
def test_spatial_path_off_is_the_plain_net_and_zero_init_on_equals_off(side):
    torch.manual_seed(0)
    off = ConditionalUNet(UNetConfig(**UNET)).eval()
    on = ConditionalUNet(UNetConfig(**UNET, spatial_cond=side)).eval()
    assert off.spatial_cond is None
    extra = set(on.state_dict()) - set(off.state_dict())
    assert extra == {"spatial_cond.weight", "spatial_cond.bias"}  # off: the official key set, nothing added
    assert on.spatial_cond.weight.shape == (64 * side * side, 6)
    _perturb(off)
    missing = on.load_state_dict(off.state_dict(), strict=False).missing_keys
    assert set(missing) == extra
    x, t, z = _inputs()
    with torch.no_grad():  # the projection starts at zero: switching the path on changes nothing at first
        assert torch.equal(on(x, t, z), off(x, t, z))


def test_spatial_map_is_linear_z_sem_upsampled_nearest_float64():
    torch.manual_seed(0)
    net = ConditionalUNet(UNetConfig(**UNET, spatial_cond=4)).double()
    _perturb(net.spatial_cond, std=1.0)
    z = torch.randn(2, 6, dtype=torch.float64)
    h = torch.zeros(2, 64, 8, 8, dtype=torch.float64)
    # independent statement: m[b, c, i, j] = (W z + b)[c·16 + (i // 2)·4 + j // 2]
    flat = z @ net.spatial_cond.weight.T + net.spatial_cond.bias
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    idx = torch.arange(64)[:, None, None] * 16 + (i // 2) * 4 + j // 2
    torch.testing.assert_close(net._spatial_map(z, h), flat[:, idx], rtol=0, atol=1e-12)


def test_spatial_path_gets_gradients_and_carries_z_sem():
    torch.manual_seed(0)
    net = ConditionalUNet(UNetConfig(**UNET, spatial_cond=8))
    x, t, z = _inputs()
    _perturb(net)
    net.spatial_cond.weight.data.zero_()  # as initialised: a zero projection must still receive a gradient
    F.mse_loss(net(x, t, z), torch.randn_like(x)).backward()
    assert net.spatial_cond.weight.grad is not None and net.spatial_cond.weight.grad.abs().sum() > 0

    _perturb(net)
    net.eval()
    with torch.no_grad():
        base = net(x, t, z)
        net.spatial_cond.weight.data.mul_(2)  # only the spatial path changes
        assert not torch.allclose(net(x, t, z), base, atol=1e-4), "the spatial z_sem path must reach the output"


def test_flatten_head_keeps_position_and_checks_its_input_size():
    torch.manual_seed(0)
    pool = SemanticEncoder(EncoderConfig(**ENC)).eval()
    flat = SemanticEncoder(EncoderConfig(**ENC, head="flatten")).eval()
    _perturb(pool, std=0.2)
    _perturb(flat, std=0.2)
    assert flat.out[3].weight.shape == (6, 64 * 4 * 4)
    x = torch.zeros(1, 3, 16, 16)
    x[..., 2:6, 2:6] = 1.0  # one bright square, and the same square mirrored to the other corner
    mirrored = x.flip(-1, -2)
    with torch.no_grad():
        # the official pooled head is blind to a 180° turn up to border effects; the flattened one is not
        d_pool = (pool(x) - pool(mirrored)).norm() / pool(x).norm()
        d_flat = (flat(x) - flat(mirrored)).norm() / flat(x).norm()
    assert d_flat > 3 * d_pool
    assert flat(x).shape == (1, 6)
    with pytest.raises(ValueError, match="head=flatten encodes 16-px"):
        flat(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (UNetConfig, dict(UNET, spatial_cond=3), "spatial_cond"),  # does not divide the lowest resolution 8
        (UNetConfig, dict(UNET, spatial_cond=4, cond_channels=None), "spatial_cond"),
        (EncoderConfig, dict(ENC, head="mean"), "head"),
    ],
)
def test_bad_spatial_settings_name_the_field(cls, kwargs, field):
    net = ConditionalUNet if cls is UNetConfig else SemanticEncoder
    with pytest.raises(ValueError, match=field):
        net(cls(**kwargs))


def test_official_export_refuses_the_spatial_path():
    from rockgen.official.hparams import OfficialImportError, official_hparams

    with pytest.raises(OfficialImportError, match="spatial"):
        official_hparams({"unet": dict(UNET, spatial_cond=4), "encoder": dict(ENC)})
    with pytest.raises(OfficialImportError, match="head='flatten'"):
        official_hparams({"unet": dict(UNET), "encoder": dict(ENC, head="flatten")})
