"""The VAE's optional convolutional stem and head (ViTAEConfig.conv_channels)."""

from __future__ import annotations

import pytest
import torch

from rockgen.models import ViTAEConfig, ViTAutoencoder
from rockgen.models.vit_ae import conv_head, conv_stem

NET = dict(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, num_heads=2, latent_dim=8)


def test_conv_stem_and_head_map_between_pixels_and_the_patch_grid():
    x = torch.randn(2, 3, 16, 16)
    assert conv_stem(3, 8, 32, 4)(x).shape == (2, 32, 4, 4)
    assert conv_head(8, 3, 4)(torch.randn(2, 8, 4, 4)).shape == (2, 3, 16, 16)
    net = ViTAutoencoder(ViTAEConfig(**NET, conv_channels=8))
    x_hat, mu, logvar = net(x)
    assert x_hat.shape == x.shape and mu.shape == logvar.shape == (2, 8)
    # the decoder is a function of z alone, and a different z gives a different image
    z = torch.randn(2, 8)
    assert not torch.allclose(net.decode(z)[0], net.decode(z)[1])


def test_conv_channels_needs_a_power_of_two_patch():
    with pytest.raises(ValueError, match="power-of-two patch_size"):
        ViTAutoencoder(ViTAEConfig(**{**NET, "image_size": 18, "patch_size": 6}, conv_channels=8))
    with pytest.raises(ValueError, match="conv_channels"):
        ViTAutoencoder(ViTAEConfig(**NET, conv_channels=-1))
