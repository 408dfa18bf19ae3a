"""Exponential moving average of model weights (DiffAE renders and encodes with the EMA model).

One fused `torch._foreach_lerp_` per call instead of a Python loop of small kernels:
    ema <- decay * ema + (1 - decay) * param  ==  ema.lerp_(param, 1 - decay)

    ema_model = copy.deepcopy(model).requires_grad_(False)
    ema_update_module_(ema_model, model, ema_decay(step, 0.9999))   # after each optimizer step
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

EMA_WARMUPS = (None, "tf")


def ema_decay(step: int, decay: float, warmup: str | None = None) -> float:
    """Decay to use at optimizer step `step` (0-based).

    warmup=None: constant `decay` (official DiffAE: 0.9999 from step 0).
    warmup="tf": min(decay, (1 + step) / (10 + step)), the num_updates rule of TensorFlow's
    ExponentialMovingAverage, so early EMA weights track the fast-moving model (0.1 at step 0, 0.5 at step 8).
    """
    if warmup is None:
        return decay
    if warmup == "tf":
        return min(decay, (1.0 + step) / (10.0 + step))
    raise ValueError(f"unknown EMA warm-up {warmup!r}; choose one of {EMA_WARMUPS}")


@torch.no_grad()
def ema_update_(ema_tensors: Sequence[Tensor], tensors: Sequence[Tensor], decay: float) -> None:
    """In place: floating ema_tensors[i] <- decay * ema + (1 - decay) * tensors[i]; other dtypes are copied.

    Pairs must match in shape, dtype and device (an EMA made by deepcopy of the model does).
    """
    if len(ema_tensors) != len(tensors):
        raise ValueError(f"EMA has {len(ema_tensors)} tensors, the model {len(tensors)}")
    ema_float, src_float = [], []
    for ema, src in zip(ema_tensors, tensors, strict=True):
        if ema.is_floating_point():
            ema_float.append(ema)
            src_float.append(src.detach())
        else:
            ema.copy_(src)
    if ema_float:
        torch._foreach_lerp_(ema_float, src_float, 1.0 - float(decay))


@torch.no_grad()
def ema_update_module_(ema_module: nn.Module, module: nn.Module, decay: float) -> None:
    """Parameters of ema_module move toward module's (lerp); buffers (e.g. norm statistics) are copied."""
    ema_update_(list(ema_module.parameters()), list(module.parameters()), decay)
    ema_buffers, buffers = list(ema_module.buffers()), list(module.buffers())
    if len(ema_buffers) != len(buffers):
        raise ValueError(f"EMA has {len(ema_buffers)} buffers, the model {len(buffers)}")
    if buffers:
        torch._foreach_copy_(ema_buffers, buffers)
