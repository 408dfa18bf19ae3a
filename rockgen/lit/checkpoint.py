"""Loading rockgen checkpoints safely: ``weights_only=True`` by default, the module class read from the file.

A checkpoint written by rockgen holds only tensors and plain containers, so it loads with
``torch.load(weights_only=True)``, which refuses pickled code. Checkpoints from elsewhere (or older
Lightning versions) that need arbitrary unpickling must be opted in with ``trusted=True`` — only for files
whose origin you trust: unpickling can run code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from rockgen.lit.common import CLASS_KEY

DEFAULT_CLASS = "experiment:LitModel"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe or of the wrong kind."""


def read_checkpoint(path: str | Path, map_location: Any = "cpu", trusted: bool = False) -> dict[str, Any]:
    """``torch.load`` with a clear error for a missing file and for a file that needs unsafe unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except Exception as err:  # torch raises UnpicklingError (a pickle.UnpicklingError) or RuntimeError
        if not trusted and "weights_only" in str(err):
            raise CheckpointError(
                f"{path} contains pickled Python objects beyond tensors and plain containers, which "
                "weights_only loading refuses (unpickling can run code). If you trust its origin, load it "
                "with trusted=True (CLI: +trusted_checkpoint=true)."
            ) from err
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err


def module_class(checkpoint: dict[str, Any]) -> type:
    """The LightningModule class recorded in a checkpoint (DiffAE LitModel for files without the record)."""
    spec = checkpoint.get(CLASS_KEY, DEFAULT_CLASS)
    module_name, _, qualname = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def load_checkpoint_module(
    path: str | Path,
    map_location: Any = "cpu",
    trusted: bool = False,
    expect: type | tuple[type, ...] | None = None,
    eval_mode: bool = True,
):
    """Rebuild the module a checkpoint was saved from, with its weights (EMA included), on ``map_location``.

    ``expect``: the class(es) the caller can use; anything else is a clear CheckpointError.
    """
    ckpt = read_checkpoint(path, map_location, trusted)
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(
            f"{path} is not a rockgen/Lightning checkpoint (no state_dict/hyper_parameters)"
        )
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
