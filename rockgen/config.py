"""Typed configuration of the training modules (plain dataclasses: no Hydra, no Lightning).

Hydra hands the LightningModules plain dicts (also what a checkpoint's hyper-parameters hold); ``parse``
turns each into its dataclass so that a misspelt key fails at once with the setting's full name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class DiffusionConf:
    """Image (or latent) diffusion: β schedule over T steps, what the network predicts, the loss."""

    schedule: str = "linear"  # linear 1e-4→0.02 (images), cosine, const (latents: β=0.008)
    num_timesteps: int = 1000
    beta_const: float = 0.008  # only for schedule=const
    prediction: str = "eps"  # eps (DiffAE), x0 or v
    loss: str = "mse"  # mse (images) or l1 (latent DDIM, as the official code)
    clip_x0: bool = True  # clamp x̂0 to [-1, 1] while sampling (images: yes; latents: no)
    # Where the training loss looks (rockgen.diffusion.weighting); defaults = DDPM/DiffAE (uniform t, no weights).
    timestep_sampler: str = "uniform"  # uniform | power (density ∝ (t/T)^timestep_power) | high (see below)
    timestep_power: float = 1.0
    timestep_high_fraction: float = 0.5  # high: this fraction of the batch at t ≥ timestep_high_from·T
    timestep_high_from: float = 0.7
    timestep_importance: bool = False  # weight losses by (1/T)/p(t): the uniform-t objective, other samples
    loss_weighting: str = "none"  # none | min_snr (Hang et al. 2023) | p2 (Choi et al. 2022)
    min_snr_gamma: float = 5.0
    p2_gamma: float = 1.0
    p2_k: float = 1.0
    x0_loss_weight: float = 0.0  # + this × ‖x̂0 − x0‖² for samples at t ≥ x0_loss_from·T
    x0_loss_from: float = 0.7


@dataclass
class OptimConf:
    """AdamW (official: Adam/AdamW lr 1e-4, no weight decay for images) with optional linear warm-up."""

    name: str = "adamw"  # adamw or adam
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    # After the warm-up: none = constant lr (official) | cosine = half a cosine from lr down to lr·min_lr_ratio at
    # the run's last step (trainer.max_steps), so a short budget ends on small, averaging steps.
    decay: str = "none"
    min_lr_ratio: float = 0.0
    encoder_lr_scale: float = 1.0  # DiffAE stage 1: the semantic encoder learns at lr × this (a param group)
    # None = auto: torch's fused AdamW kernel on CPU and CUDA (on 2 CPU cores 18x faster than the per-tensor
    # loop for 91 M parameters) under full precision (32-true); off under mixed precision, where Lightning
    # refuses gradient clipping with it. true / false force it.
    fused: bool | None = None


@dataclass
class EMAConf:
    """EMA of the weights used for evaluation, encoding and sampling."""

    decay: float = 0.9999
    # Short runs never reach a 0.9999 average; warm-up uses min(decay, (1+n)/(10+n)) at step n.
    warmup: bool = False


@dataclass
class EvalConf:
    """Validation: reconstructions of held-out tiles with inferred and random x_T at each T."""

    T: list[int] = field(default_factory=lambda: [10, 20, 50, 100])
    inferred_xT: bool = True  # DDIM-invert x0 → x_T, then render (near-perfect reconstructions)
    random_xT: bool = True  # render from fresh noise with the image's z_sem (what z_sem alone keeps)
    render_T: int = 20  # default DDIM steps of encode_stochastic/render when T is None (official T_eval)
    # Decoder of render/encode_stochastic/sample without gradients: none (eager) | freeze (TorchScript trace +
    # freeze per input shape, rockgen.models.inference; a few seconds once per shape and weight update)
    inference_compile: str = "none"
    grid_images: int = 8  # originals vs reconstructions written as a PNG grid
    seed: int = 0  # noise for random x_T, fixed so curves are comparable across validations
    lpips: bool = True  # when the AlexNet backbone weights are present
    # FID and KID of the random-x_T renders (at the largest T) vs the held-out tiles: torch-fidelity + the cached
    # Inception weights needed (one warning otherwise); costs an Inception pass per tile, so off by default
    kid: bool = False
    kid_subset_size: int = 50  # capped by the number of held-out tiles

    def __post_init__(self) -> None:
        if self.inference_compile not in ("none", "freeze"):
            raise ValueError(f"model.evaluation.inference_compile={self.inference_compile!r}: choose none or freeze")


def parse(cls: type[T], value: Any, name: str) -> T:
    """Build dataclass ``cls`` from a dict (or pass an instance through); unknown keys name the setting."""
    if isinstance(value, cls):
        return value
    value = dict(value or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {name}; valid keys: {sorted(known)}")
    return cls(**value)


def to_plain(value: Any) -> Any:
    """Dataclasses, OmegaConf containers and tuples → plain dicts/lists (safe for ``weights_only`` loading)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_plain(v) for k, v in dataclasses.asdict(value).items()}
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


@dataclass
class LatentConf:
    """Stage 2 (latent DDIM): the MLP over z-normalised z_sem, its diffusion, optimiser and EMA."""

    net: dict = field(default_factory=dict)  # rockgen.models.LatentMLPConfig fields (num_channels = z_sem width)
    diffusion: DiffusionConf = field(
        default_factory=lambda: DiffusionConf(schedule="const", beta_const=0.008, loss="l1", clip_x0=False)
    )
    optim: OptimConf = field(default_factory=lambda: OptimConf(lr=1e-4, weight_decay=0.01))
    ema: EMAConf = field(default_factory=EMAConf)
    autoenc_ckpt: str | None = None  # the trained autoencoder (stage 1) whose codes are modelled
    latents_path: str | None = None  # its latents file (task=infer_latents)
    T_latent: int = 20  # default latent DDIM steps of sample()
    grid_samples: int = 16  # samples drawn at each validation (conditional: spread over the classes)
    seed: int = 0
    # Class conditioning + classifier-free guidance: "auto" = the sorted labels of the latents file (sub-folders
    # or labels_csv), a list = exactly these classes, null = unconditional (the official latent DDIM).
    classes: Any = None
    labels_csv: str | None = None  # path,label rows; default: the sub-folder names recorded in the latents file
    label_dropout: float = 0.1  # P(label -> "no class") in training: one net is conditional and unconditional
    guidance: float = 2.0  # w of the validation grid (sample() takes its own guidance=)

    def __post_init__(self) -> None:
        self.diffusion = parse(DiffusionConf, self.diffusion, "model.latent.diffusion")
        self.optim = parse(OptimConf, self.optim, "model.latent.optim")
        self.ema = parse(EMAConf, self.ema, "model.latent.ema")
        if not 0.0 <= float(self.label_dropout) < 1.0:
            raise ValueError(f"model.latent.label_dropout must be in [0, 1), got {self.label_dropout}")
