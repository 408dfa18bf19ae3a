"""rockgen networks (pure PyTorch): DiffAE encoder, conditional UNet decoder, latent MLP, shared blocks,
and the transformer autoencoder baseline."""

from rockgen.models.blocks import AttentionBlock, ResBlock
from rockgen.models.diffae import DiffAE, count_parameters
from rockgen.models.encoder import EncoderConfig, SemanticEncoder
from rockgen.models.latent_mlp import LatentMLPConfig, MLPSkipNet
from rockgen.models.nn import GroupNorm32, timestep_embedding, zero_module
from rockgen.models.unet import ConditionalUNet, UNetConfig
from rockgen.models.vit_ae import ViTAEConfig, ViTAutoencoder

__all__ = [
    "AttentionBlock",
    "ConditionalUNet",
    "DiffAE",
    "EncoderConfig",
    "GroupNorm32",
    "LatentMLPConfig",
    "MLPSkipNet",
    "ResBlock",
    "SemanticEncoder",
    "UNetConfig",
    "ViTAEConfig",
    "ViTAutoencoder",
    "count_parameters",
    "timestep_embedding",
    "zero_module",
]
