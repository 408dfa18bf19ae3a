"""Presets per resolution and training mode: the single source of truth, registered in Hydra's ConfigStore.

Each preset is *built* from explicit values by a function (no chain of mutations); ``python run.py
template=rock128`` selects one, and any value can still be overridden (``model.optim.lr=2e-5``).

    demo                      tiny DiffAE on the embedded demo tiles, minutes on 2 CPU cores
    demo_latent               its latent DDIM (stage 2)
    rock64 / rock64_autoenc   = official ffhq64_autoenc       (90.84 M params)
    rock128 / rock128_autoenc = official ffhq128_autoenc_130M (128.55 M)
    rock256 / rock256_autoenc = official ffhq256_autoenc      (168.49 M)
    rock512 / rock512_autoenc = rockgen's 512-px design (see ``_ladder``)
    rockN_latent              stage 2 of rockN: official latent DDIM (MLP 10 x 2048, β=0.008, L1), batch 256;
                              set model.latent.autoenc_ckpt=... and model.latent.latents_path=...
    demo_pixel, rock{64..512}_pixel   pixel-space DDPM baseline: the same UNets without z_sem
    demo_vae, rock{64..512}_vae       transformer VAE-style autoencoder baseline (see ``_vit``)

Batch sizes are **global** (split over the DDP world size), as in the official templates after
``scale_up_gpus``; ``max_steps`` = the official sample budget // batch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from rockgen.config import DiffusionConf, EMAConf, EvalConf, LatentConf, OptimConf, to_plain
from rockgen.lit.pixel import SampleGridConf
from rockgen.lit.vae import VAEEvalConf
from rockgen.models import EncoderConfig, UNetConfig, ViTAEConfig

RESOLUTIONS = (64, 128, 256, 512)


@dataclass(frozen=True)
class Ladder:
    """Channel ladder of one resolution: decoder and encoder channel multipliers over a base width."""

    base: int
    decoder_mult: tuple[int, ...]
    encoder_mult: tuple[int, ...]
    attention: tuple[int, ...] = (16,)
    batch_size: int = 128  # global
    total_samples: int = 72_000_000


def _ladder(resolution: int) -> Ladder:
    """The official ladders for 64–256; 512 is ours.

    512 px: rock256's ladder (widths 256:128 … 16:512, 8:512) with one cheap 64-wide level in front, attention
    only at 16 px. 170.06 M parameters (decoder 139.86 + encoder 30.19), 986 GFLOP per decoder forward;
    saved activations 3.6 + 0.5 GiB per image in bf16 (7.2 + 1.0 fp32), about 0.75 GiB with gradient
    checkpointing, which the preset turns on. A base width of 128 at 512² instead (ch 128, (1,1,1,2,2,4,4))
    has the same size but 1.8x the FLOPs and 5.3 GiB of activations: the first level dominates.
    Global batch 32: 4 per GPU on 8 GPUs fits 40 GB cards with checkpointing.
    """
    if resolution == 64:
        return Ladder(64, (1, 2, 4, 8), (1, 2, 4, 8, 8))
    if resolution == 128:
        return Ladder(128, (1, 1, 2, 3, 4), (1, 1, 2, 3, 4, 4), total_samples=130_000_000)
    if resolution == 256:
        return Ladder(128, (1, 1, 2, 2, 4, 4), (1, 1, 2, 2, 4, 4, 4), batch_size=64, total_samples=200_000_000)
    if resolution == 512:
        return Ladder(64, (1, 2, 2, 4, 4, 8, 8), (1, 2, 2, 4, 4, 8, 8, 8), batch_size=32, total_samples=200_000_000)
    raise ValueError(f"no preset for resolution {resolution}; choose one of {RESOLUTIONS}")


@dataclass
class AutoencModel:
    """Arguments of ``experiment.LitModel`` (what ``model:`` holds in the composed config)."""

    unet: UNetConfig
    encoder: EncoderConfig
    diffusion: DiffusionConf = field(default_factory=DiffusionConf)
    optim: OptimConf = field(default_factory=OptimConf)
    ema: EMAConf = field(default_factory=EMAConf)
    evaluation: EvalConf = field(default_factory=EvalConf)
    lpips_weight: float = 0.0
    channels_last: bool = True


def _preset(
    name: str,
    target: str,
    model: Any,
    *,
    image_size: int,
    batch_size: int,
    max_steps: int,
    val_every: int,
    ckpt_every: int,
    val_batches: int | float = 4,
) -> dict[str, Any]:
    """The global-package node of a preset: model args plus the data/trainer/callback values it fixes."""
    return {
        "template_name": name,
        "model": {"_target_": target, **to_plain(model)},
        "data": {"image_size": image_size, "batch_size": batch_size},
        "trainer": {
            "max_steps": max_steps,
            "val_check_interval": val_every,
            "limit_val_batches": val_batches,
        },
        "callbacks": {"checkpoint": {"every_n_train_steps": ckpt_every}},
    }


def autoenc_preset(resolution: int) -> dict[str, Any]:
    """DiffAE autoencoder at 64/128/256/512 px with the official hyper-parameters."""
    lad = _ladder(resolution)
    unet = UNetConfig(
        image_size=resolution,
        model_channels=lad.base,
        channel_mult=lad.decoder_mult,
        attention_resolutions=lad.attention,
        dropout=0.1,
        cond_channels=512,
        gradient_checkpointing=resolution >= 512,
    )
    enc = EncoderConfig(
        image_size=resolution,
        model_channels=lad.base,
        channel_mult=lad.encoder_mult,
        attention_resolutions=lad.attention,
        out_channels=512,
        gradient_checkpointing=resolution >= 512,
    )
    model = AutoencModel(unet, enc, evaluation=EvalConf(T=[10, 20, 50, 100]))
    steps = lad.total_samples // lad.batch_size
    return _preset(
        f"rock{resolution}_autoenc",
        "experiment.LitModel",
        model,
        image_size=resolution,
        batch_size=lad.batch_size,
        max_steps=steps,
        val_every=10_000,
        ckpt_every=max(1, 100_000 // lad.batch_size),
    )


def latent_preset(
    base: dict[str, Any],
    name: str,
    latent: LatentConf,
    *,
    batch_size: int,
    max_steps: int,
    val_every: int,
    ckpt_every: int,
) -> dict[str, Any]:
    """Stage 2 on top of an autoencoder preset: same networks (weights come from ``autoenc_ckpt``), the latent
    DDIM trained on the latents file (data group switched to ``latents``)."""
    model = {**base["model"], "stage": "latent", "latent": to_plain(latent)}
    return {
        "defaults": [{"override /data": "latents"}],
        "template_name": name,
        "model": model,
        "data": {"batch_size": batch_size},
        "trainer": {"max_steps": max_steps, "val_check_interval": val_every, "limit_val_batches": 1.0},
        "callbacks": {"checkpoint": {"every_n_train_steps": ckpt_every}},
    }


def demo_preset() -> dict[str, Any]:
    """A tiny DiffAE on the embedded demo tiles: trains, validates and checkpoints in minutes on 2 CPU cores."""
    unet = UNetConfig(
        image_size=32,
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        dropout=0.0,
        embed_channels=128,
        cond_channels=128,
    )
    enc = EncoderConfig(
        image_size=32,
        model_channels=32,
        channel_mult=(1, 2, 2, 4),
        num_res_blocks=1,
        attention_resolutions=(8,),
        out_channels=128,
    )
    model = AutoencModel(
        unet,
        enc,
        # v-prediction: on a budget of a few hundred steps ε-prediction's x̂_0 at high t is still poor and
        # renders from random x_T are coloured noise (val PSNR 9.4 dB at step 500; v: 13.8 dB, tile-like).
        diffusion=DiffusionConf(prediction="v"),
        optim=OptimConf(lr=4e-4, warmup_steps=50),
        ema=EMAConf(decay=0.999, warmup=True),
        evaluation=EvalConf(T=[10, 20], grid_images=8),
    )
    return _preset(
        "demo",
        "experiment.LitModel",
        model,
        image_size=32,
        batch_size=32,
        max_steps=500,  # ≈ 0.65 s/step on 2 CPU cores: about 6 minutes with validation and start-up
        val_every=250,
        ckpt_every=250,
        val_batches=1,
    )


@dataclass
class PixelModel:
    """Arguments of ``rockgen.lit.pixel.PixelDiffusion``."""

    unet: UNetConfig
    diffusion: DiffusionConf = field(default_factory=DiffusionConf)
    optim: OptimConf = field(default_factory=OptimConf)
    ema: EMAConf = field(default_factory=EMAConf)
    evaluation: SampleGridConf = field(default_factory=SampleGridConf)
    channels_last: bool = True
    classes: Any = None  # "auto" (the data's sub-folders / labels_csv) or a list: class-conditional with CFG
    labels_csv: str | None = None
    label_dropout: float = 0.1
    guidance: float = 2.0  # w of the validation grid


def pixel_preset(resolution: int) -> dict[str, Any]:
    """Pixel DDPM at 64/128/256/512 px: the decoder of ``rock{res}`` without z_sem, same batch and budget.

    At 64-256 px this is the official DiffAE DDPM baseline's UNet (``ffhq*_ddpm``).
    """
    lad = _ladder(resolution)
    unet = UNetConfig(
        image_size=resolution,
        model_channels=lad.base,
        channel_mult=lad.decoder_mult,
        attention_resolutions=lad.attention,
        dropout=0.1,
        cond_channels=None,
        gradient_checkpointing=resolution >= 512,
    )
    model = PixelModel(unet, evaluation=SampleGridConf(T=[20, 50], grid_images=8))
    name, steps = f"rock{resolution}_pixel", lad.total_samples // lad.batch_size
    return _preset(
        name,
        "rockgen.lit.pixel.PixelDiffusion",
        model,
        image_size=resolution,
        batch_size=lad.batch_size,
        max_steps=steps,
        val_every=10_000,
        ckpt_every=max(1, 100_000 // lad.batch_size),
        val_batches=1,
    )


def demo_pixel_preset() -> dict[str, Any]:
    """The demo's UNet without z_sem: the pixel DDPM baseline in minutes on 2 CPU cores."""
    unet = UNetConfig(
        image_size=32,
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        dropout=0.0,
        embed_channels=128,
        cond_channels=None,
    )
    model = PixelModel(
        unet,
        diffusion=DiffusionConf(prediction="v"),  # as the demo DiffAE: usable samples after a few hundred steps
        optim=OptimConf(lr=4e-4, warmup_steps=50),
        ema=EMAConf(decay=0.999, warmup=True),
        evaluation=SampleGridConf(T=[10, 20], grid_images=8),
    )
    return _preset(
        "demo_pixel",
        "rockgen.lit.pixel.PixelDiffusion",
        model,
        image_size=32,
        batch_size=32,
        max_steps=600,
        val_every=300,
        ckpt_every=300,
        val_batches=1,
    )


@dataclass
class VAEModel:
    """Arguments of ``rockgen.lit.vae.LitVAE``."""

    net: ViTAEConfig
    beta: float = 1e-3  # KL weight per pixel value (see rockgen.lit.vae); 0 = plain autoencoder
    lpips_weight: float = 0.0
    optim: OptimConf = field(default_factory=lambda: OptimConf(lr=1e-4, weight_decay=0.05, warmup_steps=1000))
    ema: EMAConf = field(default_factory=lambda: EMAConf(decay=0.999))
    use_ema: bool = True
    evaluation: VAEEvalConf = field(default_factory=VAEEvalConf)


def _vit(resolution: int) -> tuple[ViTAEConfig, int]:
    """(network, global batch) of the VAE at one resolution: rockgen's choice, ViT-S/-B-like widths.

    64 px: patch 8, width 384, 6+6 blocks (24.6 M params); 128: patch 8, 512, 8+8 (55.0 M); 256: patch 16,
    768, 12+12 (182.1 M); 512: patch 16 (1024 tokens), 768, 12+12 (183.3 M), gradient checkpointing.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"no preset for resolution {resolution}; choose one of {RESOLUTIONS}")
    patch, width, depth, batch = {
        64: (8, 384, 6, 128),
        128: (8, 512, 8, 64),
        256: (16, 768, 12, 64),
        512: (16, 768, 12, 32),
    }[resolution]
    net = ViTAEConfig(
        image_size=resolution,
        patch_size=patch,
        width=width,
        encoder_depth=depth,
        decoder_depth=depth,
        num_heads=width // 64,
        latent_dim=512,
        gradient_checkpointing=resolution >= 512,
    )
    return net, batch


def vae_preset(resolution: int) -> dict[str, Any]:
    """Transformer VAE at 64/128/256/512 px: 20 M training samples (an autoencoder converges far sooner)."""
    net, batch = _vit(resolution)
    return _preset(
        f"rock{resolution}_vae",
        "rockgen.lit.vae.LitVAE",
        VAEModel(net),
        image_size=resolution,
        batch_size=batch,
        max_steps=20_000_000 // batch,
        val_every=5_000,
        ckpt_every=max(1, 100_000 // batch),
    )


def demo_vae_preset() -> dict[str, Any]:
    """A tiny transformer VAE on the demo tiles (1.5 M params, z of 128 like the demo's z_sem)."""
    net = ViTAEConfig(
        image_size=32,
        patch_size=4,
        width=128,
        encoder_depth=3,
        decoder_depth=3,
        num_heads=4,
        latent_dim=128,
        head_channels=16,
    )
    model = VAEModel(
        net,
        optim=OptimConf(lr=4e-4, weight_decay=0.05, warmup_steps=50),
        ema=EMAConf(decay=0.999, warmup=True),
    )
    return _preset(
        "demo_vae",
        "rockgen.lit.vae.LitVAE",
        model,
        image_size=32,
        batch_size=32,
        max_steps=600,
        val_every=300,
        ckpt_every=300,
        val_batches=2,
    )


def presets() -> dict[str, dict[str, Any]]:
    """Every preset by name (aliases ``rockN`` = ``rockN_autoenc``)."""
    out = {"demo": demo_preset(), "demo_pixel": demo_pixel_preset(), "demo_vae": demo_vae_preset()}
    # demo stage 2: a small MLP (4 x 256) fits the 128-d codes of a few hundred tiles in a minute
    demo_latent = LatentConf(
        net={"hidden_channels": 256, "num_layers": 4},
        T_latent=20,
        grid_samples=16,
        optim=OptimConf(lr=1e-3, weight_decay=0.01, warmup_steps=50),
        ema=EMAConf(decay=0.999, warmup=True),
    )
    out["demo_latent"] = latent_preset(
        out["demo"], "demo_latent", demo_latent, batch_size=64, max_steps=1500, val_every=500, ckpt_every=500
    )
    for res in RESOLUTIONS:
        out[f"rock{res}_autoenc"] = autoenc_preset(res)
        out[f"rock{res}"] = out[f"rock{res}_autoenc"]
        # official latent stage: 101 M codes at batch 256, AdamW lr 1e-4 wd 0.01, EMA 0.9999
        out[f"rock{res}_latent"] = latent_preset(
            out[f"rock{res}"],
            f"rock{res}_latent",
            LatentConf(),
            batch_size=256,
            max_steps=101_000_000 // 256,
            val_every=10_000,
            ckpt_every=10_000,
        )
        out[f"rock{res}_pixel"] = pixel_preset(res)
        out[f"rock{res}_vae"] = vae_preset(res)
    return out


def run_stamp() -> str:
    """``${run_stamp:}`` in run names: one value for every rank of a job. ``$ROCKGEN_RUN_STAMP`` when set (the
    torchrun script sets it for its ranks), ``job<id>`` inside SLURM, else the local time (``%Y%m%d-%H%M%S``).
    A plain ``${now:...}`` could differ between ranks started a second apart and split one run's outputs."""
    if os.environ.get("ROCKGEN_RUN_STAMP"):
        return os.environ["ROCKGEN_RUN_STAMP"]
    if os.environ.get("SLURM_JOB_ID"):
        step = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"job{os.environ['SLURM_JOB_ID']}" + (f"-{step}" if step else "")
    return time.strftime("%Y%m%d-%H%M%S")


def register() -> None:
    """Register every preset as ``template=<name>`` (package ``_global_``) in Hydra's ConfigStore, and the
    ``run_stamp`` resolver."""
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    cs = ConfigStore.instance()
    for name, node in presets().items():
        cs.store(group="template", name=name, node=node, package="_global_")
