"""The method object: what one training method owns, so that one LightningModule can drive any of them.

A ``Method`` is an ``nn.Module`` holding its networks (``model``, the trained copy, and ``ema_model``, the copy
that samples, or None) and buffers, and declares

    loss(batch) -> (loss, logs)                    the training objective of one batch (logs: unprefixed scalars)
    optimizer_setup() -> (params, OptimConf)       what the optimiser updates (parameters or torch param groups)
    ema_policy() -> (EMAConf, [(ema, net)])        the EMA policy: which (EMA copy, trained net) pairs move
    setup / validation_start / validation_step / validation_end(host, ...)   Lightning-time work, given the host
    the generation protocol of ``rockgen.methods.protocol`` (sample, generation_modes, reconstruction_codes)

``rockgen.lit.module.MethodModule`` is the LightningModule that drives it (training step, optimiser, EMA update,
checkpoint hooks). ``sample`` is shared: each method only implements ``draw`` (a ``SampleRequest`` plus its own
options, which ``sample_options`` lists for tasks that pass options through).
"""

from __future__ import annotations

import copy
import inspect
import itertools
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rockgen.config import EMAConf, OptimConf, parse, to_plain
from rockgen.methods.protocol import GenerationMode, ReconstructionCode

log = logging.getLogger(__name__)

Device = torch.device | str | None
Section = dict | None  # a config section as a plain dict (what checkpoints record), None for its defaults


@dataclass(frozen=True)
class SampleRequest:
    """What every ``sample`` call fixes, whatever the method: how many images, where, the seeded generator
    (None: the global RNG) and the step counts (None: the method's default; a method without that stage ignores
    it)."""

    n: int
    device: torch.device
    generator: torch.Generator | None
    T: int | None = None
    T_latent: int | None = None


class Method(torch.nn.Module):
    """Networks, objective, optimiser groups, EMA policy and generation protocol of one training method."""

    method_key: ClassVar[str]  # see rockgen.methods.protocol
    method_label: ClassVar[str]
    preset_method: ClassVar[str]
    generator_device: ClassVar[str | None] = None  # where ``sample``'s seeded generator lives (None: the device)

    hparams: dict[str, Any]  # the constructor arguments, normalised: what a checkpoint records
    model: torch.nn.Module
    ema_model: torch.nn.Module | None
    image_size: int

    # ---------------------------------------------------------------- shared pieces
    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.parameters(), self.buffers())).device

    def train(self, mode: bool = True):
        """Train mode for the trained nets only: the EMA copy stays in eval mode.

        Lightning calls ``module.train()`` before every training epoch; without this the EMA nets would render
        and encode with dropout active (wrong samples from a callback or a bench between training steps).
        """
        super().train(mode)
        if self.ema_model is not None:
            self.ema_model.eval()
        return self

    # ---------------------------------------------------------------- building blocks of the constructors
    def _training_settings(self, hp: dict[str, Any]) -> None:
        """``model.optim`` and ``model.ema`` of the hyper-parameters, checked (errors name the setting)."""
        self.optim_conf = parse(OptimConf, hp["optim"], "model.optim")
        self.ema_conf = parse(EMAConf, hp["ema"], "model.ema")

    def _set_networks(self, model: torch.nn.Module, ema: bool = True, channels_last: bool | None = None) -> None:
        """The trained net, its EMA copy (frozen, in eval mode; None with ``ema=False``) and the memory format
        images are fed in (``channels_last``; None: the default, not recorded)."""
        self.model = model
        self.ema_model = copy.deepcopy(model).requires_grad_(False).eval() if ema else None
        if channels_last is not None:
            self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
            self.to(memory_format=self.memory_format)

    # ---------------------------------------------------------------- training (defaults; methods override)
    optim_conf: OptimConf  # model.optim
    ema_conf: EMAConf  # model.ema

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of one batch (a scalar with a graph) and the scalars to log (unprefixed names)."""
        raise NotImplementedError(f"{type(self).__name__} defines no training loss")

    def optimizer_setup(self) -> tuple[Any, OptimConf]:
        """What the optimiser updates (parameters or torch param groups) and its settings: the trained net."""
        return self.model.parameters(), self.optim_conf

    def ema_policy(self) -> tuple[EMAConf, list[tuple[torch.nn.Module, torch.nn.Module]]]:
        """The EMA settings and the (EMA copy, trained net) pairs moved after each optimiser step."""
        return self.ema_conf, ([] if self.ema_model is None else [(self.ema_model, self.model)])

    def after_optimizer_step(self) -> None:
        """Work after each optimiser step, before the EMA update (e.g. keeping DDP ranks identical)."""

    def setup(self, host, stage: str) -> None:
        """Lightning's ``setup`` (``host`` is the LightningModule: its trainer, datamodule, device)."""

    def validation_start(self, host) -> None:
        pass

    def validation_step(self, host, batch: dict[str, Any], batch_idx: int) -> None:
        pass

    def validation_end(self, host) -> None:
        pass

    def predict_step(self, batch: dict[str, Any]) -> Any:
        raise NotImplementedError(f"{self.method_label} has no prediction step (latent inference needs a DiffAE)")

    # ---------------------------------------------------------------- generation protocol
    @torch.no_grad()
    def sample(
        self, N: int, device: Device = None, T: int | None = None, T_latent: int | None = None, seed=None, **options
    ) -> torch.Tensor:
        """N new images (N, 3, S, S) in [0, 1] on ``device``; ``seed`` fixes every random draw.

        T: image sampler steps, T_latent: latent sampler steps (each method's default when None; a method
        without that stage ignores it). ``options``: those of ``sample_options`` (see the method's ``draw``);
        any other is ignored with one log line, so a task can pass one set of options to any model.
        """
        known = self.sample_options
        unused = sorted(set(options) - known)
        if unused:
            log.warning("%s.sample ignores %s", type(self).__name__, unused)
        device = torch.device(device) if device is not None else self.device
        req = SampleRequest(N, device, seeded_generator(seed, self.generator_device or device), T, T_latent)
        return self.draw(req, **{k: v for k, v in options.items() if k in known})

    def draw(self, req: SampleRequest) -> torch.Tensor:
        """The images of ``sample`` (req.n, 3, S, S) in [0, 1]; a method adds its options as keyword arguments."""
        raise NotImplementedError(f"{type(self).__name__} cannot draw new images")

    @property
    def sample_options(self) -> frozenset[str]:
        """Names of the options ``sample`` takes beyond (N, device, T, T_latent, seed): ``draw``'s own."""
        params = inspect.signature(type(self).draw).parameters
        return frozenset(name for name in params if name not in ("self", "req"))

    def sample_unavailable(self) -> str | None:
        """Why this model cannot draw new images (None: it can)."""
        return None

    def generation_modes(self, **options: Any) -> list[GenerationMode]:
        raise NotImplementedError

    def reconstruction_codes(self, **options: Any) -> list[ReconstructionCode]:
        """Ways to reproduce a given image: none unless the method has an encoder."""
        return []


def plain_sections(**sections: Any) -> dict[str, dict]:
    """Config sections (dicts, OmegaConf nodes or None) as plain dicts, {} for None: what a checkpoint records."""
    return {name: to_plain(value or {}) for name, value in sections.items()}


def seeded_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed``; None (the global RNG) when seed is None."""
    return None if seed is None else torch.Generator(device=device).manual_seed(int(seed))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (any dtype) → float32 in [0, 1]."""
    return ((x.float() + 1) / 2).clamp(0, 1)
