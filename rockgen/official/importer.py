"""Read an official DiffAE checkpoint (Lightning 1.4 ``.ckpt``) and rebuild it as a rockgen ``LitModel``.

    from rockgen.convert import import_official
    model = import_official("checkpoints/ffhq256_autoenc/last.ckpt", out="imported.ckpt")
    z = model.encode(x); xT = model.encode_stochastic(x, z, T=20); rec = model.render(xT, z, T=20)

The file is read with ``torch.load(weights_only=True)`` first. A full Lightning 1.4 training checkpoint keeps its
callback states under Python *class* keys (``{ModelCheckpoint: {...}}``), which that refuses; such a file is
unpickled only with ``trusted=True`` (CLI ``trusted_checkpoint=true``), because unpickling can run arbitrary code.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from rockgen.lit.checkpoint import DEFAULT_CLASS, module_class, save_atomic
from rockgen.lit.common import CLASS_KEY
from rockgen.official.hparams import ASSUMED, MAPPING, OfficialImportError, rockgen_hparams
from rockgen.official.state import check_against, has_latent_net, to_rockgen

log = logging.getLogger(__name__)
RECORD_KEY = "official_import"


def read_official(path: str | Path, trusted: bool = False) -> dict[str, Any]:
    """``torch.load`` an official checkpoint on the CPU; a refusal of weights-only loading says why."""
    path = Path(path)
    if not path.is_file():
        raise OfficialImportError(f"official checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as err:
        text = str(err)
        if not trusted and "weights_only" in text.replace("weights-only", "weights_only"):
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found[1]})" if found else ""
            raise OfficialImportError(
                f"{path} holds pickled Python objects{what} besides tensors and plain containers, which "
                "torch.load(weights_only=True) refuses: Lightning 1.4 checkpoints store callback states under "
                "Python class keys. Unpickling can run arbitrary code; if you trust where the file comes from, "
                "import it with trusted_checkpoint=true (Python: trusted=True)."
            ) from None  # torch's own long advice (add_safe_globals) does not apply to a foreign checkpoint
        raise OfficialImportError(f"cannot read official checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise OfficialImportError(
            f"{path} is not an official DiffAE Lightning checkpoint (needs 'state_dict' and 'hyper_parameters'; "
            f"has {sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__})"
        )
    return ckpt


def _jsonable(value: Any) -> Any:
    """A copy of the official hyper-parameters that loads with weights_only (odd objects become strings)."""
    return json.loads(json.dumps(value, default=str))


def import_official(path: str | Path, out: str | Path | None = None, *, trusted: bool = False):
    """Official DiffAE checkpoint ``path`` → rockgen DiffAE ``LitModel`` (eval mode, CPU) with identical weights.

    ``out``: also write it as a rockgen checkpoint there (``LitModel.load_from_checkpoint`` and every
    ``ckpt_path=`` task load it). The model's ``official_import`` attribute is the import record.
    """
    ckpt = read_official(path, trusted)
    hp = dict(ckpt["hyper_parameters"])
    state = dict(ckpt["state_dict"])
    latent = has_latent_net(state)
    hparams = rockgen_hparams(hp, latent)
    mapped, extras = to_rockgen(state)

    cls = module_class({CLASS_KEY: DEFAULT_CLASS})
    model = cls(**hparams)
    expected = model.state_dict()
    check_against(mapped, expected)
    if latent:
        mapped.update(_latent_stats(hp, extras, expected["latent_mean"].shape[0], path))
    elif "conds_mean" in extras or "conds_std" in extras:
        # autoencoder checkpoints of a run with latent_infer_path: statistics without a latent net to use them
        log.info("%s: conds_mean/conds_std without a latent net; not used", path)
    if latent:
        mapped["latent_ready"] = torch.tensor(True)  # sample() may draw z_sem
    model.load_state_dict(mapped, strict=True)
    model.eval()

    record = {
        "source": str(Path(path).resolve()),
        "name": hp.get("name"),
        "global_step": int(ckpt.get("global_step", 0) or 0),
        "epoch": int(ckpt.get("epoch", 0) or 0),
        "pytorch_lightning_version": str(ckpt.get("pytorch-lightning_version", "unknown")),
        "latent_net": latent,
        "num_official_keys": len(state),
        "num_rockgen_keys": len(expected),
        "dropped": sorted(k for k in state if ".linear_emb." in k)
        + (["x_T (kept in the record)"] if "x_T" in extras else [])
        + ([] if latent else [k for k in ("conds_mean", "conds_std") if k in extras]),
        "assumed": ASSUMED,
        "mapping": MAPPING,
        "official_hyper_parameters": _jsonable(hp),
    }
    model.official_import = record
    if out is not None:
        save_imported(model, out, x_T=extras.get("x_T"))
    return model


def _latent_stats(hp: dict[str, Any], extras: dict[str, torch.Tensor], dim: int, path) -> dict[str, torch.Tensor]:
    """conds_mean/conds_std (1, D) → latent_mean/latent_std (D,); identity when the official run did not z-normalise."""
    if not hp.get("latent_znormalize", False):
        return {"latent_mean": torch.zeros(dim), "latent_std": torch.ones(dim)}
    if "conds_mean" not in extras or "conds_std" not in extras:
        raise OfficialImportError(
            f"{path}: latent_znormalize=True but the state_dict has no conds_mean/conds_std, so sampled latents "
            "cannot be de-normalised"
        )
    stats = {}
    for src, dst in (("conds_mean", "latent_mean"), ("conds_std", "latent_std")):
        value = extras[src].reshape(-1)
        if value.shape[0] != dim:
            raise OfficialImportError(f"{src}: official {tuple(extras[src].shape)} vs rockgen {dst} ({dim},)")
        stats[dst] = value
    return stats


def save_imported(model, path: str | Path, x_T: torch.Tensor | None = None) -> Path:
    """Write ``model`` as a rockgen checkpoint (what Lightning writes for it, plus the import record)."""
    cls = type(model)
    record = dict(getattr(model, "official_import", {}))
    if x_T is not None:
        record["x_T"] = x_T.detach().cpu()
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": pl.__version__,
        "epoch": record.get("epoch", 0),
        "global_step": record.get("global_step", 0),
        CLASS_KEY: f"{cls.__module__}:{cls.__qualname__}",
        RECORD_KEY: record,
    }
    path = Path(path)
    save_atomic(checkpoint, path)
    return path
