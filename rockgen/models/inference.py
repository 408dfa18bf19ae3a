"""An inference-only fast path for the sampling loops: the decoder traced and frozen by TorchScript.

A DDIM render or inversion calls the same decoder T times at one input shape with no gradients. ``torch.jit.trace``
+ ``torch.jit.freeze`` turn those calls into one graph with the weights as constants: the per-call work that
depends on weights only (the sub-pixel tap sums of ``upsample_conv3x3``, the (1 + z_s) folding inputs) is done
once, and Python dispatch disappears. Measured in scripts/bench.py (``--inference freeze``): see README "Speed".

The frozen graph is rebuilt whenever something it baked in changes: input shapes / dtypes / memory format, the
weights (in-place updates such as the EMA bump a parameter's ``_version``; loading a state
dict copies into them), the conv padding modes (``rockgen.seamless`` switches them) or the sub-pixel up-sampling
function. With gradients enabled (``render(grad=True)``), under autocast (bf16) or under a ``torch.compile`` trace
it calls the eager net. Outputs equal the eager net's up to float rounding (tests/test_speed_levers.py).
"""

from __future__ import annotations

import time
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import nn

from rockgen.models import blocks

INFERENCE_COMPILE = ("none", "freeze")


class _Positional(nn.Module):
    """net(x, t, cond, cls) with positional arguments only, for torch.jit.trace (None args are left out)."""

    def __init__(self, net: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.net, self.names = net, names

    def forward(self, x: torch.Tensor, t: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, **dict(zip(self.names, extra, strict=True)))


def _signature(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.device)


class FrozenNet:
    """Calls ``net(x, t, cond=..., cls=...)`` through a traced, frozen copy built on first use per signature.

    net: a module in eval mode (a decoder: x (B, C, H, W), t (B,), cond (B, D) or None -> (B, C, H, W)).
    Only the newest signature is kept (a sampling loop uses one); the weights are held twice while it lives.
    """

    def __init__(self, net: nn.Module):
        self._net = weakref.ref(net)  # the cache below is keyed on net: no strong reference back to it
        self._convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        self._key: tuple | None = None
        self._frozen: torch.jit.ScriptModule | None = None
        self.builds = 0  # how many times a graph was traced (tests; a rebuild per call would be a bug)
        self.build_s = 0.0  # seconds spent tracing and freezing (benchmarks report it as the one-off cost)

    @property
    def net(self) -> nn.Module:
        net = self._net()
        if net is None:
            raise RuntimeError("FrozenNet: its network no longer exists")
        return net

    def _weights_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in (*self.net.parameters(), *self.net.buffers()))

    def _key_of(self, x, t, cond, cls) -> tuple:
        return (
            _signature(x),
            _signature(t),
            _signature(cond),
            _signature(cls),
            tuple(m.padding_mode for m in self._convs),
            blocks.upsample_conv3x3,
            self._weights_key(),
        )

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, cls: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (
            torch.is_grad_enabled()
            or self.net.training
            or torch.compiler.is_compiling()
            or torch.is_autocast_enabled(x.device.type)  # traced casts under autocast: not verified, so eager
        ):
            return self.net(x, t, cond=cond, cls=cls)
        key = self._key_of(x, t, cond, cls)
        if key != self._key:
            self._frozen, self._key = None, None  # free the old graph's weights before tracing the new one
            self._frozen = self._build(x, t, cond, cls)
            self._key = key
        return self._frozen(x, t, *(a for a in (cond, cls) if a is not None))

    def _build(self, x, t, cond, cls) -> torch.jit.ScriptModule:
        names = tuple(n for n, a in (("cond", cond), ("cls", cls)) if a is not None)
        extra = tuple(a for a in (cond, cls) if a is not None)
        start = time.perf_counter()
        with warnings.catch_warnings():
            # TracerWarnings about shape-dependent Python values: the graph is keyed on every input shape.
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_Positional(self.net, names).eval(), (x, t, *extra), check_trace=False)
            frozen = torch.jit.freeze(traced)
        self.builds += 1
        self.build_s += time.perf_counter() - start
        return frozen


def inference_fn(net: nn.Module, mode: str) -> Callable[..., torch.Tensor]:
    """``net`` itself (mode none) or its ``FrozenNet`` (freeze), cached on the module so every render and
    inversion of one model shares one graph. mode: one of ``INFERENCE_COMPILE``."""
    if mode not in INFERENCE_COMPILE:
        raise ValueError(f"model.inference_compile={mode!r}: choose one of {', '.join(INFERENCE_COMPILE)}")
    if mode == "none":
        return net
    frozen = _FROZEN.get(net)
    if frozen is None:
        frozen = _FROZEN[net] = FrozenNet(net)
    return frozen


# One FrozenNet per network, outside the module (not copied by deepcopy, not pickled, not in the state dict).
_FROZEN: weakref.WeakKeyDictionary[nn.Module, FrozenNet] = weakref.WeakKeyDictionary()
