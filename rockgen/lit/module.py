"""The one LightningModule: drives any ``rockgen.methods.Method`` (training step, optimiser, EMA, checkpoints).

The method is a child module named ``method``, but checkpoints keep the keys they always had (``model.*``,
``ema_model.*``, ``latent_mean``, ...): the prefix is dropped when the state dict is written and added back
when one is loaded, so checkpoints of either layout load. The module answers for its method: ``module.sample``,
``module.encode``, ``module.ema_model`` are the method's (attribute look-up falls through to it, and setting an
attribute the method holds sets it on the method).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from rockgen.ema import ema_decay, ema_update_module_
from rockgen.lit.common import RockgenModule, build_optimizer, check_finite_loss, trainer_precision
from rockgen.methods.base import Method

# The EMA copy is meant to stay in eval mode (no dropout) while the trained copy trains.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=UserWarning)

PREFIX = "method."


class MethodModule(RockgenModule):
    """LightningModule around one method object; the hyper-parameters are the method's constructor arguments."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.save_hyperparameters(method.hparams)
        self.method = method
        self.register_state_dict_post_hook(_drop_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            method = self.__dict__.get("_modules", {}).get("method")
            if method is None or name.startswith("__"):
                raise
            return getattr(method, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # an attribute the method holds is set on the method (``module.code_class = ...`` must reach it), not
        # shadowed by a copy on the module that the method's own code would never read
        method = self.__dict__.get("_modules", {}).get("method")
        own = name in self.__dict__ or hasattr(type(self), name) or name in ("method", "training")
        if method is not None and not own and hasattr(method, name):
            setattr(method, name, value)
        else:
            super().__setattr__(name, value)

    # ---------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        self.method.setup(self, stage)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logs = self.method.loss(batch)
        check_finite_loss(self, loss)
        logs = {f"train/{k}": v.detach() for k, v in logs.items()}
        self.log_dict(logs, prog_bar=True, batch_size=batch_size_of(batch))
        return loss

    def configure_optimizers(self):
        params, conf = self.method.optimizer_setup()
        total = None
        if conf.decay != "none":  # the decay ends at the run's last step: max_steps, else what the epochs give
            total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        return build_optimizer(params, conf, trainer_precision(self), total_steps=total)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.method.after_optimizer_step()
        conf, pairs = self.method.ema_policy()
        decay = ema_decay(self.trainer.global_step, conf.decay, "tf" if conf.warmup else None)
        for ema, net in pairs:
            ema_update_module_(ema, net, decay)

    # ---------------------------------------------------------------- validation, prediction
    def on_validation_epoch_start(self) -> None:
        self.method.validation_start(self)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.method.validation_step(self, batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.method.validation_end(self)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        return self.method.predict_step(batch)


def batch_size_of(batch: dict[str, Any]) -> int:
    """Items in a batch: the length of its first tensor (``img`` or ``z``)."""
    return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))


def _drop_prefix(module, state_dict: dict[str, Any], prefix: str, local_metadata) -> None:
    """State-dict hook: ``<prefix>method.model.x`` → ``<prefix>model.x`` (the keys checkpoints have always had)."""
    inner = prefix + PREFIX
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_prefix(module, state_dict: dict[str, Any], prefix: str, *args) -> None:
    """Load-state-dict pre-hook: the inverse of ``_drop_prefix`` (keys already prefixed are left as they are)."""
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + PREFIX)]:
        state_dict[prefix + PREFIX + key[len(prefix) :]] = state_dict.pop(key)
