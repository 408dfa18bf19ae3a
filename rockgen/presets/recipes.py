"""Named recipes: the demo presets, tuned away from the official values so that they learn in minutes on CPU."""

from __future__ import annotations

from dataclasses import replace

from rockgen.config import DiffusionConf, EMAConf, EvalConf, LatentConf, OptimConf
from rockgen.methods.pixel import SampleGridConf
from rockgen.models import ViTAEConfig
from rockgen.presets.methods import encoder_config, latent, unet_config
from rockgen.presets.scales import DEMO
from rockgen.presets.schema import AutoencModel, Budget, PixelModel, Preset, VAEModel

# v-prediction: on a budget of a few hundred steps ε-prediction's x̂_0 at high t is still poor and renders from
# random x_T are coloured noise (val PSNR 9.4 dB at step 500; v: 13.8 dB, tile-like).
DEMO_DIFFUSION = DiffusionConf(prediction="v")
DEMO_OPTIM = OptimConf(lr=4e-4, warmup_steps=50)
DEMO_EMA = EMAConf(decay=0.999, warmup=True)
DEMO_Z = 512  # z_sem width of the demo autoencoder (128 carries 1 dB less of the tile; see demo())


def demo() -> Preset:
    """A tiny DiffAE on the embedded demo tiles: about 10–12 minutes on 2 AVX2 CPU cores.

    z_sem is standardised over the batch (``model.encoder.z_norm=batch``): without it most of the code is a constant
    offset the decoder uses as a bias; with it z_sem-only renders (random x_T) gain 1 dB at step 500 (15.7 → 16.7
    dB). A spatial z_sem path (``model.unet.spatial_cond=8``: z_sem → an 8×8 map added before the decoder's middle
    block; ``model.encoder.head=flatten``: a position-keeping encoder head) lets z_sem carry the layout: 16.7 →
    18.9 dB, inferred x_T kept. z_sem 512 instead of 128: 19.6–19.8 dB over three runs against 18.5–19.0 (inferred
    30.4–30.6 against 30.1–30.3), ≈ 10 % slower per step; its latent stage needs the wider MLP of demo_latent
    (README, "Training, checkpoints, resume" and "Conditional generation").
    """
    model = AutoencModel(
        replace(unet_config(DEMO), spatial_cond=8, cond_channels=DEMO_Z),
        replace(encoder_config(DEMO), z_norm="batch", head="flatten", out_channels=DEMO_Z),
        diffusion=DEMO_DIFFUSION,
        optim=DEMO_OPTIM,
        ema=DEMO_EMA,
        evaluation=EvalConf(T=[10, 20], grid_images=8),
    )
    return Preset("demo", model, Budget(32, 500, 250, 250, 1), DEMO.image_size)


def demo_latent(base: Preset) -> Preset:
    """Demo stage 2: an MLP of 4 x 1024 fits the 512-d codes of a few hundred tiles in minutes (4 x 256 does not
    obey the class: sampled-code accuracy 0.28 at w = 2 against 0.99; README, "Conditional generation")."""
    conf = LatentConf(
        net={"hidden_channels": 1024, "num_layers": 4},
        T_latent=20,
        grid_samples=16,
        optim=OptimConf(lr=1e-3, weight_decay=0.01, warmup_steps=50),
        ema=DEMO_EMA,
    )
    return latent(base, "demo_latent", conf, Budget(64, 1500, 500, 500, 1.0))


def demo_pixel() -> Preset:
    """The demo's UNet without z_sem: the pixel DDPM baseline in minutes on 2 CPU cores."""
    model = PixelModel(
        unet_config(DEMO, conditional=False),
        diffusion=DEMO_DIFFUSION,
        optim=DEMO_OPTIM,
        ema=DEMO_EMA,
        evaluation=SampleGridConf(T=[10, 20], grid_images=8),
    )
    return Preset("demo_pixel", model, Budget(32, 600, 300, 300, 1), DEMO.image_size)


def demo_vae() -> Preset:
    """A tiny transformer VAE on the demo tiles (2.4 M params, z of 128).

    ``bottleneck="spatial"``: with z carried by 4 latent tokens (the old default) the decoder's output stays one
    colour per tile for the whole budget (held-out 16.3 dB at step 600, the mean-colour level 16.5 dB); every
    patch position reading z directly passes it within 100 steps, then stalls at 19.9 dB (600 steps);
    ``linear_path`` lifts that to 22.2 dB / SSIM 0.67 (README, "VAE-style autoencoder").
    """
    net = ViTAEConfig(
        image_size=DEMO.image_size,
        patch_size=4,
        width=128,
        encoder_depth=3,
        decoder_depth=3,
        num_heads=4,
        latent_dim=DEMO.z_channels,
        head_channels=16,
        bottleneck="spatial",
        linear_path=True,
    )
    model = VAEModel(net, optim=replace(DEMO_OPTIM, weight_decay=0.05), ema=DEMO_EMA)
    return Preset("demo_vae", model, Budget(32, 600, 300, 300, 2), DEMO.image_size)
