"""``trainer.precision=auto``: bf16-mixed where the hardware computes bf16 natively, 32-true elsewhere.

Native bf16 means: a CUDA device with bf16 units (Ampere or newer; ``torch.cuda.is_bf16_supported(
including_emulation=False)``), or a CPU with the AVX512-BF16 or AMX-BF16 instructions (``/proc/cpuinfo`` flags,
else torch's CPU capability). Without them bf16 is emulated and many times *slower* than fp32 (a 2048² bf16
matmul took > 10 s on an AVX2-only EPYC), so ``auto`` picks 32-true there, and an explicit bf16 request on such
hardware gets a warning with the measured cost.

    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)   # e.g. "bf16-mixed"
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

BF16 = ("bf16-mixed", "bf16", "bf16-true")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolved_accelerator(accelerator: Any) -> str:
    """Lightning's accelerator name for ``trainer.accelerator`` (auto: gpu if CUDA, else mps, else cpu)."""
    acc = str(accelerator or "auto").lower()
    if acc != "auto":
        return "gpu" if acc == "cuda" else acc
    if torch.cuda.is_available():
        return "gpu"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(accelerator: str) -> tuple[bool, str]:
    """Whether ``accelerator`` (cpu, gpu, mps) computes bf16 natively, and why (for the log line)."""
    if accelerator == "gpu":
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} has bf16 units"
        return False, f"{name} has no bf16 units (needs Ampere or newer)"
    if accelerator == "cpu":
        found = sorted(cpu_flags() & set(CPU_BF16_FLAGS))
        if found:
            return True, f"the CPU has {' and '.join(found)}"
        capability = torch.backends.cpu.get_cpu_capability()
        if "BF16" in capability.upper() or "AMX" in capability.upper():
            return True, f"torch reports CPU capability {capability}"
        return False, f"the CPU has neither {' nor '.join(CPU_BF16_FLAGS)} (torch: {capability}): bf16 is emulated"
    return False, f"bf16 autocast is not used on {accelerator}"


def bf16_cost(device: str = "cpu", n: int = 256) -> float:
    """Time of an n² bf16 matmul over the fp32 one on ``device`` (best of 3 each): > 1 = bf16 slower."""
    a = torch.randn(n, n, device=device)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            x @ x
            if device != "cpu":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        out[dtype] = best
    return out[torch.bfloat16] / max(out[torch.float32], 1e-9)


def resolve_precision(precision: Any, accelerator: Any, training: bool = True) -> str:
    """The Lightning precision for ``trainer.precision`` (``auto`` chosen by hardware; explicit values checked).

    ``training=False`` (generate, infer_latents): ``auto`` is 32-true, so written samples and latents are the
    full-precision ones whatever the machine.

    Raises ValueError for a precision the device cannot run (Lightning would silently switch 16-mixed to bf16
    on the CPU); warns when bf16 is requested explicitly on hardware that only emulates it.
    """
    p, acc = str(precision if precision is not None else "auto"), resolved_accelerator(accelerator)
    if p == "auto" and not training:
        return "32-true"
    if p == "auto":
        native, why = native_bf16(acc)
        chosen = "bf16-mixed" if native else "32-true"
        log.info("trainer.precision=auto -> %s: %s", chosen, why)
        return chosen
    if p in ("16-mixed", "16") and acc == "cpu":
        raise ValueError(
            f"trainer.precision={p} (fp16 autocast with loss scaling) needs a GPU; this run is on the CPU. "
            "Use trainer.precision=auto (bf16-mixed on CPUs with native bf16, else 32-true) or 32-true."
        )
    if p in BF16 and acc == "gpu" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"trainer.precision={p}: {torch.cuda.get_device_name()} has no bf16 support (bf16 needs "
            "Ampere or newer): use trainer.precision=16-mixed or 32-true"
        )
    if p in BF16 and acc in ("cpu", "gpu"):
        native, why = native_bf16(acc)
        if not native:
            cost = bf16_cost("cuda" if acc == "gpu" else "cpu")
            warnings.warn(
                f"trainer.precision={p}, but {why}: a bf16 matmul measured {cost:.1f}x the time of fp32 here. "
                "trainer.precision=auto (or 32-true) is faster on this machine.",
                stacklevel=2,
            )
    return p
