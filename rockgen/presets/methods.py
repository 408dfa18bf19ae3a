"""The method axis of the presets: DiffAE autoencoder, its latent DDIM, pixel DDPM and the transformer VAE,
each built from a ``Scale`` (so the networks of one resolution are defined once, here)."""

from __future__ import annotations

from rockgen.config import EvalConf, LatentConf
from rockgen.methods.pixel import SampleGridConf
from rockgen.models import EncoderConfig, UNetConfig, ViTAEConfig
from rockgen.presets.scales import Scale
from rockgen.presets.schema import AutoencModel, Budget, LatentModel, PixelModel, Preset, VAEModel


def unet_config(s: Scale, conditional: bool = True) -> UNetConfig:
    """The decoder of a scale; ``conditional=False`` drops z_sem (the pixel-DDPM baseline's UNet)."""
    return UNetConfig(
        **_trunk(s),
        channel_mult=s.decoder_mult,
        dropout=s.dropout,
        embed_channels=s.embed_channels,
        cond_channels=s.z_channels if conditional else None,
    )


def encoder_config(s: Scale) -> EncoderConfig:
    """The semantic encoder of a scale (one level deeper than the decoder)."""
    return EncoderConfig(**_trunk(s), channel_mult=s.encoder_mult, out_channels=s.z_channels)


def _trunk(s: Scale) -> dict:
    """What the decoder and the encoder of a scale share: resolution, width, depth, attention, checkpointing."""
    return dict(
        image_size=s.image_size,
        model_channels=s.base,
        num_res_blocks=s.num_res_blocks,
        attention_resolutions=s.attention,
        gradient_checkpointing=s.checkpointing,
    )


def vit_config(s: Scale) -> ViTAEConfig:
    """The VAE baseline's transformer at a scale (64 heads per channel group of 64)."""
    patch, width, depth, _ = s.vit
    return ViTAEConfig(
        image_size=s.image_size,
        patch_size=patch,
        width=width,
        encoder_depth=depth,
        decoder_depth=depth,
        num_heads=width // 64,
        latent_dim=s.z_channels,
        bottleneck="spatial",  # as demo_vae: latent tokens leave the decoder at one colour per tile
        gradient_checkpointing=s.checkpointing,
    )


def full_budget(batch: int, total_samples: int, val_every: int, val_batches: int | float = 4) -> Budget:
    """``max_steps`` = the sample budget // batch, a checkpoint every ~100k samples."""
    return Budget(batch, total_samples // batch, val_every, max(1, 100_000 // batch), val_batches)


def autoenc(s: Scale) -> Preset:
    """DiffAE autoencoder with the official hyper-parameters (= official ffhq*_autoenc at 64-256 px)."""
    model = AutoencModel(unet_config(s), encoder_config(s), evaluation=EvalConf(T=[10, 20, 50, 100]))
    return Preset(
        f"rock{s.image_size}_autoenc", model, full_budget(s.batch_size, s.total_samples, 10_000), s.image_size
    )


def latent(base: Preset, name: str, conf: LatentConf, budget: Budget) -> Preset:
    """Stage 2 on top of an autoencoder preset: its networks frozen, the latent DDIM trained on its codes."""
    m = base.model
    assert isinstance(m, AutoencModel), f"{base.name} is not a DiffAE autoencoder preset"
    model = LatentModel(
        m.unet, m.encoder, m.diffusion, m.optim, m.ema, m.evaluation, m.lpips_weight, m.channels_last, latent=conf
    )
    return Preset(name, model, budget, image_size=None)


def official_latent(base: Preset, resolution: int) -> Preset:
    """The official latent DDIM (MLP 10 x 2048, β=0.008, L1): 101 M codes at batch 256, AdamW lr 1e-4, EMA 0.9999."""
    return latent(base, f"rock{resolution}_latent", LatentConf(), Budget(256, 101_000_000 // 256, 10_000, 10_000, 1.0))


def pixel(s: Scale) -> Preset:
    """Pixel DDPM: the decoder of ``rock<res>`` without z_sem, same batch and budget (official ffhq*_ddpm)."""
    model = PixelModel(unet_config(s, conditional=False), evaluation=SampleGridConf(T=[20, 50], grid_images=8))
    return Preset(
        f"rock{s.image_size}_pixel", model, full_budget(s.batch_size, s.total_samples, 10_000, 1), s.image_size
    )


def vae(s: Scale) -> Preset:
    """Transformer VAE: 20 M training samples (an autoencoder converges far sooner than a diffusion model)."""
    batch = s.vit[3]
    return Preset(
        f"rock{s.image_size}_vae", VAEModel(vit_config(s)), full_budget(batch, 20_000_000, 5_000), s.image_size
    )
