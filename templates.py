"""Presets per resolution and training mode: the single source of truth, registered in Hydra's ConfigStore.

Each preset is *built* from explicit values by a function (no chain of mutations); ``python run.py
template=rock128`` selects one, and any value can still be overridden (``model.optim.lr=2e-5``).

    demo                      tiny DiffAE on the embedded demo tiles, minutes on 2 CPU cores
    rock64 / rock64_autoenc   = official ffhq64_autoenc       (90.84 M params)
    rock128 / rock128_autoenc = official ffhq128_autoenc_130M (128.55 M)
    rock256 / rock256_autoenc = official ffhq256_autoenc      (168.49 M)
    rock512 / rock512_autoenc = rockgen's 512-px design (see ``_ladder``)

Batch sizes are **global** (split over the DDP world size), as in the official templates after
``scale_up_gpus``; ``max_steps`` = the official sample budget // batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from rockgen.config import DiffusionConf, EMAConf, EvalConf, OptimConf, to_plain
from rockgen.models import EncoderConfig, UNetConfig

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
        return Ladder(64, (1, 2, 2, 4, 4, 8, 8), (1, 2, 2, 4, 4, 8, 8, 8), batch_size=32,
                      total_samples=200_000_000)
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


def _preset(name: str, target: str, model: Any, *, image_size: int, batch_size: int, max_steps: int,
            val_every: int, ckpt_every: int, val_batches: int | float = 4) -> dict[str, Any]:
    """The global-package node of a preset: model args plus the data/trainer/callback values it fixes."""
    return {
        "template_name": name,
        "model": {"_target_": target, **to_plain(model)},
        "data": {"image_size": image_size, "batch_size": batch_size},
        "trainer": {"max_steps": max_steps, "val_check_interval": val_every, "limit_val_batches": val_batches},
        "callbacks": {"checkpoint": {"every_n_train_steps": ckpt_every}},
    }


def autoenc_preset(resolution: int) -> dict[str, Any]:
    """DiffAE autoencoder at 64/128/256/512 px with the official hyper-parameters."""
    lad = _ladder(resolution)
    unet = UNetConfig(image_size=resolution, model_channels=lad.base, channel_mult=lad.decoder_mult,
                      attention_resolutions=lad.attention, dropout=0.1, cond_channels=512,
                      gradient_checkpointing=resolution >= 512)
    enc = EncoderConfig(image_size=resolution, model_channels=lad.base, channel_mult=lad.encoder_mult,
                        attention_resolutions=lad.attention, out_channels=512,
                        gradient_checkpointing=resolution >= 512)
    model = AutoencModel(unet, enc, evaluation=EvalConf(T=[10, 20, 50, 100]))
    steps = lad.total_samples // lad.batch_size
    return _preset(f"rock{resolution}_autoenc", "experiment.LitModel", model, image_size=resolution,
                   batch_size=lad.batch_size, max_steps=steps, val_every=10_000,
                   ckpt_every=max(1, 100_000 // lad.batch_size))


def demo_preset() -> dict[str, Any]:
    """A tiny DiffAE on the embedded demo tiles: trains, validates and checkpoints in minutes on 2 CPU cores."""
    unet = UNetConfig(image_size=32, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_resolutions=(8,), dropout=0.0, embed_channels=128, cond_channels=128)
    enc = EncoderConfig(image_size=32, model_channels=32, channel_mult=(1, 2, 2, 4), num_res_blocks=1,
                        attention_resolutions=(8,), out_channels=128)
    model = AutoencModel(unet, enc, optim=OptimConf(lr=4e-4, warmup_steps=50),
                         ema=EMAConf(decay=0.999, warmup=True),
                         evaluation=EvalConf(T=[10, 20], grid_images=8))
    return _preset("demo", "experiment.LitModel", model, image_size=32, batch_size=32, max_steps=600,
                   val_every=300, ckpt_every=300, val_batches=1)


def presets() -> dict[str, dict[str, Any]]:
    """Every preset by name (aliases ``rockN`` = ``rockN_autoenc``)."""
    out = {"demo": demo_preset()}
    for res in RESOLUTIONS:
        out[f"rock{res}_autoenc"] = autoenc_preset(res)
        out[f"rock{res}"] = out[f"rock{res}_autoenc"]
    return out


def register() -> None:
    """Register every preset as ``template=<name>`` (package ``_global_``) in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    for name, node in presets().items():
        cs.store(group="template", name=name, node=node, package="_global_")
