"""Reading and writing rockgen checkpoints safely: ``weights_only=True`` loading, atomic writes.

A checkpoint written by rockgen holds only tensors and plain containers, so it loads with
``torch.load(weights_only=True)``, which refuses pickled code. Checkpoints from elsewhere (or older
Lightning versions) that need arbitrary unpickling must be opted in with ``trusted=True`` (CLI:
``trusted_checkpoint=true``) — only for files whose origin you trust: unpickling can run code.

``SafeCheckpointIO`` is the Trainer's checkpoint plugin (``build_trainer`` installs it): every checkpoint the
Trainer writes (periodic, ``last.ckpt``, pre-emption) goes to ``<name>.<pid>.tmp``, is fsynced and renamed over the
target, so a crash or ``kill -9`` mid-write leaves the previous file intact; every checkpoint it reads
(``fit(ckpt_path=...)``, resume) goes through :func:`read_checkpoint`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from rockgen.lit.common import CLASS_KEY

DEFAULT_CLASS = "rockgen.lit.diffae:LitModel"
# Where classes recorded by older checkpoints live now (rockgen/ never imports the root shims).
MOVED = {"experiment:LitModel": DEFAULT_CLASS}


# The process-wide ``trusted_checkpoint`` setting (the CLI sets it from the config before any task runs). An
# environment variable, so DDP ranks and spawned processes (ddp_spawn, compare's isolated jobs) inherit it.
TRUST_ENV = "ROCKGEN_TRUSTED_CHECKPOINT"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe or of the wrong kind."""


def set_trusted(trusted: bool) -> None:
    """Make every checkpoint read without an explicit ``trusted=`` follow this setting (``trusted_checkpoint``)."""
    os.environ[TRUST_ENV] = "1" if trusted else "0"


def trusted_default() -> bool:
    """The process-wide ``trusted_checkpoint`` setting (False unless set)."""
    return os.environ.get(TRUST_ENV, "0") == "1"


def _check_format(path: Path) -> None:
    """torch.save writes a zip archive (or, legacy, a pickle stream): anything else is not a checkpoint."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return
    raise CheckpointError(
        f"{path} is not a PyTorch checkpoint: it starts with {head!r}, not a zip archive or pickle stream "
        "(a text or log file given as a checkpoint path?)"
    )


def read_checkpoint(path: str | Path, map_location: Any = "cpu", trusted: bool | None = None) -> dict[str, Any]:
    """``torch.load`` with a clear error for a missing file, a non-checkpoint and a file that needs unsafe
    unpickling. ``trusted=None``: the process-wide ``trusted_checkpoint`` setting (:func:`set_trusted`)."""
    path = Path(path)
    trusted = trusted_default() if trusted is None else trusted
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    _check_format(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except Exception as err:  # torch raises UnpicklingError (a pickle.UnpicklingError) or RuntimeError
        if not trusted and "weights_only" in str(err):
            raise CheckpointError(
                f"{path} contains pickled Python objects beyond tensors and plain containers, which "
                "weights_only loading refuses (unpickling can run code). If you trust its origin, load it "
                "with trusted=True (CLI: trusted_checkpoint=true)."
            ) from err
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def save_atomic(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to ``<path>.tmp`` in the same folder, fsync, then rename over ``path`` (atomic on POSIX)."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    # one temp name per writer (PID), so two processes never rename each other's half-written file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable (a power loss right after must not bring back the old name)
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic local writes and ``weights_only`` reads with clear errors.

    Reads unpickle arbitrary objects only with ``trusted=True`` (CLI ``trusted_checkpoint=true``) or
    ``Trainer.fit(..., weights_only=False)`` (Lightning >= 2.6); Lightning's default ``None`` loads tensors and
    plain containers only, whatever torch's own default is.
    """

    def __init__(self, trusted: bool | None = None) -> None:
        super().__init__()
        self.trusted = trusted_default() if trusted is None else trusted

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # fsspec transaction
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        trusted = self.trusted or weights_only is False
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only=not trusted)
        return read_checkpoint(str(path).removeprefix("file://"), map_location or "cpu", trusted=trusted)


def module_class(checkpoint: dict[str, Any]) -> type:
    """The LightningModule class recorded in a checkpoint (DiffAE LitModel for files without the record)."""
    spec = checkpoint.get(CLASS_KEY, DEFAULT_CLASS)
    spec = MOVED.get(spec, spec)
    module_name, _, qualname = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def load_checkpoint_module(
    path: str | Path,
    map_location: Any = "cpu",
    trusted: bool | None = None,
    expect: type | tuple[type, ...] | None = None,
    eval_mode: bool = True,
):
    """Rebuild the module a checkpoint was saved from, with its weights (EMA included), on ``map_location``.

    ``expect``: the class(es) the caller can use; anything else is a clear CheckpointError. ``trusted=None``:
    the process-wide ``trusted_checkpoint`` setting.
    """
    ckpt = read_checkpoint(path, map_location, trusted)
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path} is not a rockgen/Lightning checkpoint (no state_dict/hyper_parameters)")
    cls = module_class(ckpt)
    if expect is not None and not issubclass(cls, expect):
        names = expect.__name__ if isinstance(expect, type) else " or ".join(e.__name__ for e in expect)
        raise CheckpointError(f"{path} holds a {cls.__name__} checkpoint; this task needs a {names}")
    model = cls(**ckpt["hyper_parameters"])
    model.load_state_dict(ckpt["state_dict"])
    model.on_load_checkpoint(ckpt)
    model.loaded_from = {"path": str(path), "global_step": int(ckpt.get("global_step", 0))}
    model.to(map_location if not callable(map_location) and map_location is not None else "cpu")
    return model.eval() if eval_mode else model
