"""Class conditions of the latent DDIM and the pixel baseline: the class list, each code's class, user requests.

Labels come from where ``task=manipulate`` reads them: the sub-folder of each source (as recorded in the latents
file) or a ``labels_csv`` of ``path,label`` rows. The class list is fixed when a model is built (sorted names)
and saved in its hyper-parameters, so a checkpoint always maps indices to the same names. Index K (= number of
classes) is the "no class" token: label dropout during training, the unconditional branch of guidance.

Bad input gets a clear error before any training or sampling: a CSV whose paths are not images of the data, a
requested class that has no training codes, a class name the model does not know (the message lists them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rockgen.latent_ops import match_labels, read_labels_csv


def code_labels_strict(paths: Sequence[str], folder_labels: Sequence[str], labels_csv: str | None) -> list[str | None]:
    """Label of each code (None = unlabelled): its CSV label, else (no CSV) its sub-folder name.

    Every CSV row must name an image of the data (matched as in ``match_labels``): a row pointing outside the
    data usually means the CSV belongs to another data set, so it is an error here, not a warning.
    """
    if not labels_csv:
        return [lab or None for lab in folder_labels]
    table = read_labels_csv(labels_csv)
    known = set(paths)
    by_suffix: set[tuple[str, ...]] = set()
    for p in known:
        parts = Path(p).parts
        by_suffix.update(parts[-k:] for k in range(1, len(parts) + 1))
    outside = [key for key in table if key not in known and Path(key).parts not in by_suffix]
    if outside:
        raise ValueError(
            f"labels CSV {labels_csv}: {len(outside)} of its {len(table)} paths are not images of the data "
            f"(e.g. {outside[:3]}; data images look like {sorted(known)[:1]}): fix the paths or the data root"
        )
    return match_labels(paths, table, f"labels CSV {labels_csv}")


def resolve_classes(labels: Sequence[str | None], classes: Sequence[str] | str | None, where: str) -> list[str]:
    """The model's class list: sorted labels present (``classes="auto"``) or the given names, each with codes.

    ``where`` names the setting in error messages (e.g. ``model.latent.classes``).
    """
    counts: dict[str, int] = {}
    for lab in labels:
        if lab is not None:
            counts[lab] = counts.get(lab, 0) + 1
    if classes == "auto":
        if not counts:
            raise ValueError(
                f"{where}=auto but no code has a label: put the images in sub-folders of the data root "
                "(sub-folder name = class) or give labels_csv=<path,label CSV>"
            )
        return sorted(counts)
    if isinstance(classes, str) or classes is None:
        raise ValueError(f"{where} must be 'auto', a list of class names, or null (unconditional); got {classes!r}")
    names = [str(c) for c in classes]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"{where} must list distinct class names, got {names}")
    empty = [c for c in names if counts.get(c, 0) == 0]
    if empty:
        raise ValueError(
            f"{where}: class(es) {empty} have no training images "
            f"(labelled codes per class: {dict(sorted(counts.items()))})"
        )
    return names


def class_index_of_codes(labels: Sequence[str | None], classes: Sequence[str], where: str) -> torch.Tensor:
    """(N,) int64 class index of each code; unlabelled codes get the null index len(classes).

    A label outside ``classes`` is an error (the model was built for other classes)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab for lab in labels if lab is not None and lab not in index})
    if unknown:
        raise ValueError(f"{where}: the data has labels {unknown} that the model's classes {list(classes)} lack")
    null = len(classes)
    return torch.tensor([index[lab] if lab is not None else null for lab in labels], dtype=torch.long)


def requested_classes(cls, n: int, classes: Sequence[str] | None, device=None) -> torch.Tensor:
    """Turn a user's ``cls`` (a name, an index, a list of either, or an (n,) tensor) into (n,) int64 indices.

    One name/index is repeated n times; a list must have n entries. Names the model does not know are an error
    that lists the known ones; so is any class request to an unconditional model.
    """
    if not classes:
        raise ValueError(
            "this checkpoint is unconditional (trained without classes), so it takes no class= and no guidance=; "
            "train with model.latent.classes=auto (DiffAE latent stage) or model.classes=auto (pixel) for that"
        )
    if isinstance(cls, torch.Tensor):
        items = cls.reshape(-1).tolist()
    elif isinstance(cls, (str, int)):
        items = [cls] * n
    else:
        items = list(cls)
    if len(items) == 1 and n != 1:
        items = items * n
    if len(items) != n:
        raise ValueError(f"cls: give one class or {n} (one per sample), got {len(items)}")
    out = []
    for c in items:
        if isinstance(c, str) and c in classes:
            out.append(classes.index(c))
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(classes):
            out.append(c)
        else:
            raise ValueError(f"unknown class {c!r}; this model knows {list(classes)}")
    return torch.tensor(out, dtype=torch.long, device=device)


def drop_labels(cls: torch.Tensor, null_class: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Label dropout: each index replaced by ``null_class`` with probability p (one network, both branches)."""
    if p <= 0:
        return cls
    drop = torch.rand(cls.shape, generator=generator, device=cls.device) < p
    return torch.where(drop, torch.full_like(cls, null_class), cls)


def latent_labels(latents_path: str, labels_csv: str | None) -> list[str | None]:
    """Label of each code of a latents file (sub-folder, or ``labels_csv``), as the latent stage trains on."""
    from rockgen.latents import load_latents

    lat = load_latents(latents_path)
    return code_labels_strict(lat.paths, lat.labels, labels_csv)


def latent_class_list(latent: dict) -> list[str]:
    """Resolve ``model.latent.classes`` (``auto`` or a list) against the latents file when it is at hand.

    A saved list (a checkpoint being loaded, whose latents file may be gone) is returned as it is.
    """
    classes = latent.get("classes")
    path = latent.get("latents_path")
    if classes != "auto" and (not path or not Path(path).is_file()):
        return resolve_classes([], classes, "model.latent.classes") if isinstance(classes, str) else list(classes)
    if not path:
        raise ValueError("model.latent.classes=auto reads the labels of model.latent.latents_path, which is not set")
    labels = latent_labels(path, latent.get("labels_csv"))
    return resolve_classes(labels, classes, "model.latent.classes")


def resolve_auto_classes(model_cfg, datamodule) -> None:
    """``model.classes=auto`` of an image-space model (pixel baseline) → the sorted labels of the data, in place.

    Resolved before the model is built because the class embedding's size depends on it; the list is then saved
    in the checkpoint's hyper-parameters. (The DiffAE latent stage resolves its own from the latents file.)
    """
    if model_cfg.get("classes") != "auto":
        return
    if not hasattr(datamodule, "files") or not hasattr(datamodule, "labels"):
        raise ValueError(f"model.classes=auto needs an image data module, got {type(datamodule).__name__}")
    from omegaconf import open_dict

    labels = code_labels_strict(datamodule.files, datamodule.labels(), model_cfg.get("labels_csv"))
    with open_dict(model_cfg):
        model_cfg.classes = resolve_classes(labels, "auto", "model.classes")


def check_condition(cls, guidance: float | None, classes: Sequence[str] | None, how: str) -> None:
    """Raise a clear error for a class/guidance request a model with ``classes`` cannot serve (before sampling).

    ``how``: what makes a model conditional, for the message (e.g. "train it with model.classes=auto").
    """
    if guidance is not None and not classes:
        raise ValueError(f"guidance={guidance} needs a class-conditional checkpoint; {how}")
    if guidance is not None and cls is None:
        raise ValueError(f"guidance={guidance} needs a class: give class=<one of {list(classes)}>")
    if cls is not None:
        requested_classes(cls, 1 if isinstance(cls, (str, int)) else len(cls), classes)
