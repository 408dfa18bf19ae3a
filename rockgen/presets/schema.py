"""Typed presets: the ``model:`` arguments of each method and the ``Preset`` that becomes a Hydra node.

A preset's node (``Preset.node``) is what ``template=<name>`` merges into the composed config at package
``_global_``: the model's constructor arguments under ``model`` (with ``_target_``) plus the data, trainer and
checkpoint values it fixes. Every value can still be overridden on the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rockgen.config import DiffusionConf, EMAConf, EvalConf, LatentConf, OptimConf, to_plain
from rockgen.methods.pixel import SampleGridConf
from rockgen.methods.vae import VAEEvalConf
from rockgen.models import EncoderConfig, UNetConfig, ViTAEConfig


@dataclass
class AutoencModel:
    """Arguments of ``rockgen.lit.diffae.LitModel`` (stage 1: semantic encoder + conditional decoder)."""

    target: ClassVar[str] = "rockgen.lit.diffae.LitModel"
    unet: UNetConfig
    encoder: EncoderConfig
    diffusion: DiffusionConf = field(default_factory=DiffusionConf)
    optim: OptimConf = field(default_factory=OptimConf)
    ema: EMAConf = field(default_factory=EMAConf)
    evaluation: EvalConf = field(default_factory=EvalConf)
    lpips_weight: float = 0.0
    channels_last: bool = True


@dataclass
class LatentModel(AutoencModel):
    """Stage 2 on top of an autoencoder: the same networks (weights from ``latent.autoenc_ckpt``) + latent DDIM."""

    latent: LatentConf = field(default_factory=LatentConf)
    stage: str = "latent"


@dataclass
class PixelModel:
    """Arguments of ``rockgen.lit.pixel.PixelDiffusion`` (the UNet without z_sem)."""

    target: ClassVar[str] = "rockgen.lit.pixel.PixelDiffusion"
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


@dataclass
class VAEModel:
    """Arguments of ``rockgen.lit.vae.LitVAE``."""

    target: ClassVar[str] = "rockgen.lit.vae.LitVAE"
    net: ViTAEConfig
    beta: float = 1e-3  # KL weight per pixel value (see rockgen.lit.vae); 0 = plain autoencoder
    lpips_weight: float = 0.0
    optim: OptimConf = field(default_factory=lambda: OptimConf(lr=1e-4, weight_decay=0.05, warmup_steps=1000))
    ema: EMAConf = field(default_factory=lambda: EMAConf(decay=0.999))
    use_ema: bool = True
    evaluation: VAEEvalConf = field(default_factory=VAEEvalConf)


Model = AutoencModel | PixelModel | VAEModel


@dataclass
class Budget:
    """Global batch, training length and the validation/checkpoint cadence (in optimizer steps)."""

    batch_size: int
    max_steps: int
    val_every: int
    ckpt_every: int
    val_batches: int | float = 4


@dataclass
class Preset:
    """One ``template=<name>``: a method's model arguments at one image size with its budget."""

    name: str
    model: Model
    budget: Budget
    image_size: int | None  # None: not fixed by the preset (latent stage: the data are codes)

    def node(self) -> dict[str, Any]:
        """The global-package Hydra node of this preset."""
        data: dict[str, Any] = {"batch_size": self.budget.batch_size}
        if self.image_size is not None:
            data = {"image_size": self.image_size, **data}
        node: dict[str, Any] = {
            "template_name": self.name,
            "model": {"_target_": self.model.target, **to_plain(self.model)},
            "data": data,
            "trainer": {
                "max_steps": self.budget.max_steps,
                "val_check_interval": self.budget.val_every,
                "limit_val_batches": self.budget.val_batches,
            },
            "callbacks": {"checkpoint": {"every_n_train_steps": self.budget.ckpt_every}},
        }
        if isinstance(self.model, LatentModel):  # stage 2 trains on the latents file
            node = {"defaults": [{"override /data": "latents"}], **node}
        return node
