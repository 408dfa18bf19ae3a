"""Working in DiffAE's latent space: interpolation between two tiles and moves along a class direction.

Both operate on the two parts of a DiffAE code (Preechakul et al. 2022, §3 and §5): the semantic z_sem
(``model.encode``) and the stochastic x_T (DDIM inversion, ``model.encode_stochastic``)::

    from rockgen.latent_ops import interpolate, load_image_tensor, manipulate
    x_a = load_image_tensor("a.png", model.image_size)             # (1, 3, S, S) in [-1, 1]
    strip = interpolate(model, x_a, x_b, frames=8, T=50)           # (8, 3, S, S) in [0, 1]
    lat = load_latents("logs/infer_latents/.../latents.pt")
    images, clf = manipulate(model, lat, x_a, "layered", alphas=[-0.3, 0, 0.3], T=50)

* Interpolation (paper §5.1): z_sem is interpolated linearly, x_T spherically (x_T is close to Gaussian, so
  its norm stays ≈ √n along a slerp while a lerp would shrink it); each end is DDIM-inverted with its own
  z_sem, so the first and last frames are exactly the ends' inverted reconstructions.
* Manipulation (paper §5.3, official ``manipulate.ipynb``): a linear classifier on z-normalised codes
  z̃ = (z − μ)/σ gives a unit direction d̂ per class; z̃' = z̃ + α·√D·d̂, de-normalised and rendered with the
  image's own inverted x_T. √D is the typical norm of z̃ (unit variance per dimension), so α is the step as a
  fraction of a code's length: the official examples use α = 0.3.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rockgen.data.fit import FITS as FIT_RULES
from rockgen.data.fit import center_window, fit_image
from rockgen.data.images import load_rgb
from rockgen.data.tiles import to_model_range
from rockgen.latents import Latents

log = logging.getLogger(__name__)

FITS = FIT_RULES  # the data.fit rule of training (rockgen.data.fit)


# ------------------------------------------------------------------------------------------ interpolation
def slerp(
    a: torch.Tensor, b: torch.Tensor, w: float | Sequence[float] | torch.Tensor, eps: float = 1e-4
) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985) of each sample, flattened: a, b (B, ...) → (B, ...).

    slerp(a, b, w) = sin((1−w)θ)/sin θ · a + sin(wθ)/sin θ · b with θ the angle between a and b; the angle to
    ``a`` grows linearly in w and unit vectors stay unit. Batch dims of size 1 broadcast, and ``w`` is a
    float or one weight per sample (B,). Where sin θ < ``eps`` (near-(anti)parallel) it falls back to the lerp
    (1−w)·a + w·b. w = 0 and w = 1 return a and b exactly.
    """
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"slerp expects batched tensors (B, ...), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"slerp: sample shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    shape = a.shape[1:]
    af, bf = a.flatten(1), b.flatten(1)
    w = torch.as_tensor(w, dtype=torch.float64, device=a.device).reshape(-1, 1)
    cos = F.cosine_similarity(af.double(), bf.double(), dim=1, eps=1e-30).clamp(-1, 1).unsqueeze(1)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    parallel = sin < eps
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    ca = torch.where(parallel, 1 - w, torch.sin((1 - w) * theta) / safe)
    cb = torch.where(parallel, w, torch.sin(w * theta) / safe)
    out = ca.to(a.dtype) * af + cb.to(b.dtype) * bf
    return out.reshape(-1, *shape)


def lerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(1−w)·a + w·b for a, b (1 or B, D) and w (B,) → (B, D); w = 0 and w = 1 give a and b exactly."""
    w = w.to(a).reshape(-1, 1)
    return (1 - w) * a + w * b


def load_image_tensor(path: str | Path, image_size: int, fit: str = "crop") -> torch.Tensor:
    """Read an image file as the model's input: (1, 3, S, S) float32 in [-1, 1].

    The ``data.fit`` rule of training (:func:`rockgen.data.fit.fit_image`), then the central S×S window:
    ``fit="crop"``: native resolution (a survey has one ground sampling distance; rescaling changes the
    apparent grain size), images smaller than S resized (shorter side to S, Lanczos); ``"resize"``: the whole
    picture, longer side to S (Lanczos, aspect kept), padded black; ``"pad"``: native, small images padded.
    Raises FileNotFoundError / ``ImageReadError``, both naming the file.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    img = fit_image(load_rgb(path), image_size, fit)
    top, left = center_window(img.shape[0], img.shape[1], image_size)
    return to_model_range(img[top : top + image_size, left : left + image_size]).unsqueeze(0)


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"{name}: expected an image (3, S, S) or a batch (B, 3, S, S), got {tuple(x.shape)}")
    return x


def render_batched(
    model, x_T: torch.Tensor, z: torch.Tensor, T: int | None, batch_size: int = 16, progress: bool = False
) -> torch.Tensor:
    """``model.render`` of x_T (N, 3, S, S) with codes (N, D) in chunks of ``batch_size`` → [0, 1], on CPU."""
    bs = max(1, int(batch_size))
    chunks = [
        model.render(x_T[i : i + bs], z[i : i + bs], T=T, progress=progress).cpu() for i in range(0, len(x_T), bs)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def interpolate(
    model,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    frames: int = 8,
    T: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """Frames from image a to image b (both ends included): (frames, 3, S, S) in [0, 1].

    x_a, x_b (1, 3, S, S) in [-1, 1]. Frame i at w = i/(frames−1) renders x_T = slerp(x_T^a, x_T^b, w) with
    z_sem = lerp(z^a, z^b, w); x_T^a = DDIM-inversion of a with z^a (T steps), likewise for b. Frame 0 is
    exactly ``render(encode_stochastic(x_a, z^a), z^a)``, the last frame b's.
    """
    if int(frames) < 2:
        raise ValueError(f"frames must be >= 2 (both ends are frames), got {frames}")
    x = torch.cat([_as_batch(x_a, "x_a"), _as_batch(x_b, "x_b")])
    if x.shape[0] != 2:
        raise ValueError(f"interpolate takes one image per end, got {x.shape[0]} images")
    z = model.encode(x)
    x_T = model.encode_stochastic(x, z, T=T, progress=progress)
    w = torch.linspace(0, 1, int(frames), device=z.device)
    return render_batched(model, slerp(x_T[:1], x_T[1:], w), lerp(z[:1], z[1:], w), T, batch_size, progress)


# ------------------------------------------------------------------------------------------ labels
def read_labels_csv(path: str | Path) -> dict[str, str]:
    """``path,label`` rows (an optional ``path,label`` header line) → {path: label}; clear errors per line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {path}")
    table: dict[str, str] = {}
    with path.open(newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2:
                raise ValueError(f"{path}:{lineno}: expected 2 columns 'path,label', got {len(row)}: {row}")
            key, label = row[0].strip(), row[1].strip()
            if lineno == 1 and (key.lower(), label.lower()) == ("path", "label"):
                continue
            if key in table and table[key] != label:
                raise ValueError(f"{path}:{lineno}: {key} is labelled both {table[key]!r} and {label!r}")
            table[key] = label
    if not table:
        raise ValueError(f"labels CSV {path} has no rows (expected lines 'path,label')")
    return table


def match_labels(paths: Sequence[str], table: dict[str, str], source: str = "labels CSV") -> list[str | None]:
    """Label of each path from ``table``, whose keys may be absolute or relative (matched as a path suffix).

    A key matches the path it equals, else the unique path that ends with the key's components (a key relative
    to the data root, ``cobbles/cobbles_0001.png``). Unlabelled paths get None; an ambiguous key is an error.
    """
    by_suffix: dict[tuple[str, ...], set[str]] = {}
    for p in set(paths):
        parts = Path(p).parts
        for k in range(1, len(parts) + 1):
            by_suffix.setdefault(parts[-k:], set()).add(p)
    label_of: dict[str, str] = {}
    unmatched = 0
    for key, label in table.items():
        hits = by_suffix.get(Path(key).parts, set())
        hits = {key} if key in hits else hits  # an exact path wins over longer paths that end with it
        if len(hits) > 1:
            raise ValueError(
                f"{source}: {key!r} matches {len(hits)} images (e.g. {sorted(hits)[:2]}): give a longer path"
            )
        unmatched += not hits
        label_of.update(dict.fromkeys(hits, label))
    if not label_of:
        raise ValueError(
            f"{source}: none of its {len(table)} paths matches an image of the latents file "
            f"(e.g. CSV {next(iter(table))!r} vs latents {paths[0] if paths else '-'!r})"
        )
    if unmatched:
        log.warning("%s: %d of its %d paths match no image of the latents file", source, unmatched, len(table))
    return [label_of.get(p) for p in paths]


def code_labels(latents: Latents, labels_csv: str | Path | None = None) -> list[str | None]:
    """Class of each row of a latents file: its sub-folder name, or its CSV label; None = unlabelled."""
    if labels_csv:
        return match_labels(latents.paths, read_labels_csv(labels_csv), f"labels CSV {labels_csv}")
    labels = [lab or None for lab in latents.labels]
    if not any(labels):
        raise ValueError(
            "no class labels: the latents file's images were not in sub-folders of the data "
            "root (sub-folder name = class); give a CSV of path,label with labels_csv=..."
        )
    return labels


# ------------------------------------------------------------------------------------------ classifier
@dataclass
class LinearClassifier:
    """Multinomial logistic regression p(k | z̃) = softmax(W z̃ + b)_k on z-normalised codes z̃ (D,)."""

    weights: torch.Tensor  # (C, D)
    bias: torch.Tensor  # (C,)
    classes: list[str]
    heldout_accuracy: float | None  # fraction of held-out codes classified right (None: nothing held out)
    train_accuracy: float = float("nan")
    counts: dict[str, int] = field(default_factory=dict)  # labelled codes per class
    heldout_counts: dict[str, int] = field(default_factory=dict)

    def logits(self, zn: torch.Tensor) -> torch.Tensor:
        """(N, D) → (N, C)."""
        return zn.to(self.weights) @ self.weights.T + self.bias

    def predict(self, zn: torch.Tensor) -> list[str]:
        return [self.classes[i] for i in self.logits(zn).argmax(1).tolist()]

    def direction(self, target_class: str) -> torch.Tensor:
        """Unit vector (D,) in z̃ space towards ``target_class``: its weight minus the mean class weight.

        Moving along it raises class k's logit against the average of all logits; with two classes it is the
        direction of w_k − w_other (the binary classifier's normal). Softmax weights are defined only up to a
        common shift, so the centring makes the direction independent of it.
        """
        if target_class not in self.classes:
            raise ValueError(f"unknown target_class {target_class!r}; the labels have classes {self.classes}")
        w = self.weights - self.weights.mean(0, keepdim=True)
        d = w[self.classes.index(target_class)]
        if float(d.norm()) < 1e-12:
            raise ValueError(f"the classifier's weight for {target_class!r} is zero: no direction to move")
        return d / d.norm()

    def summary(self) -> dict:
        """JSON-ready description (no weights)."""
        return {
            "classes": list(self.classes),
            "heldout_accuracy": self.heldout_accuracy,
            "train_accuracy": self.train_accuracy,
            "counts": dict(self.counts),
            "heldout_counts": dict(self.heldout_counts),
        }


def stratified_split(
    labels: Sequence[str], holdout: float, seed: int = 0, groups: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """Deterministic (train, held-out) row indices: per class, a ``holdout`` fraction of its groups.

    ``groups`` (e.g. source image paths) keep every tile of one photo on the same side, so held-out accuracy
    is not inflated by near-duplicate neighbours; default one group per row. Each class keeps at least one
    group for training and, when it has two or more and ``holdout > 0``, holds out at least one.
    """
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    groups = list(groups) if groups is not None else [str(i) for i in range(len(labels))]
    gen = torch.Generator().manual_seed(int(seed))
    held: set[tuple[str, str]] = set()
    for cls in sorted(set(labels)):
        keys = sorted({g for g, lab in zip(groups, labels, strict=True) if lab == cls})
        n = len(keys)
        n_hold = min(n - 1, max(int(n >= 2 and holdout > 0), round(n * holdout)))
        for i in torch.randperm(n, generator=gen)[:n_hold].tolist():
            held.add((cls, keys[i]))
    is_held = [(lab, g) in held for lab, g in zip(labels, groups, strict=True)]
    return [i for i, h in enumerate(is_held) if not h], [i for i, h in enumerate(is_held) if h]


def fit_linear_classifier(
    zn: torch.Tensor,
    labels: Sequence[str | None],
    holdout: float = 0.2,
    seed: int = 0,
    epochs: int = 100,
    l2: float = 1e-3,
    groups: Sequence[str] | None = None,
) -> LinearClassifier:
    """Fit softmax regression on z-normalised codes zn (N, D) by full-batch L-BFGS; score a held-out split.

    Loss = mean cross-entropy + l2/2·‖W‖² (bias free). Rows labelled None or "" are left out. ``epochs`` =
    L-BFGS iterations; ``holdout``/``seed``/``groups``: see :func:`stratified_split`.
    """
    if zn.ndim != 2 or zn.shape[0] != len(labels):
        raise ValueError(f"zn must be (N, D) with one label per row, got {tuple(zn.shape)} and {len(labels)} labels")
    rows = [i for i, lab in enumerate(labels) if lab]
    labs = [labels[i] for i in rows]
    classes = sorted(set(labs))
    if len(classes) < 2:
        raise ValueError(
            f"a class direction needs labels of at least two classes, found {classes or 'none'} "
            "(sub-folder names of the images, or labels_csv=...)"
        )
    grp = [groups[i] for i in rows] if groups is not None else None
    train, held = stratified_split(labs, holdout, seed, grp)
    x = zn[rows].float().cpu()
    y = torch.tensor([classes.index(lab) for lab in labs])
    weights = torch.zeros(len(classes), x.shape[1], requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS(
        [weights, bias],
        lr=1,
        max_iter=int(epochs),
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x[train] @ weights.T + bias, y[train]) + 0.5 * l2 * weights.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    counts = dict(sorted(Counter(labs).items()))
    clf = LinearClassifier(
        weights.detach(), bias.detach(), classes, None, counts=counts, heldout_counts=dict.fromkeys(classes, 0)
    )
    pred = clf.logits(x).argmax(1)
    clf.train_accuracy = int((pred[train] == y[train]).sum()) / len(train)
    if held:
        clf.heldout_accuracy = int((pred[held] == y[held]).sum()) / len(held)
        clf.heldout_counts.update(Counter(labs[i] for i in held))
    return clf


# ------------------------------------------------------------------------------------------ manipulation
def shift_codes(latents: Latents, z: torch.Tensor, direction: torch.Tensor, alphas: Sequence[float]) -> torch.Tensor:
    """z (B, D) moved by α·√D·d̂ in z-normalised space, for each α → (B·A, D), image-major.

    denormalise(normalise(z) + α√D d̂) = z + α√D σ⊙d̂, computed in this form so that α = 0 returns z exactly.
    """
    a = torch.as_tensor(list(alphas), dtype=z.dtype, device=z.device)
    step = math.sqrt(z.shape[1]) * latents.std.to(z) * direction.to(z)  # (D,)
    return (z[:, None, :] + a[None, :, None] * step).reshape(-1, z.shape[1])


@torch.no_grad()
def manipulate(
    model,
    latents: Latents,
    x: torch.Tensor,
    target_class: str,
    alphas: Sequence[float] = (-0.3, 0.0, 0.3, 0.6),
    T: int | None = None,
    *,
    classifier: LinearClassifier | None = None,
    labels_csv: str | Path | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[torch.Tensor, LinearClassifier]:
    """Move images along a class direction → (images (B·A, 3, S, S) in [0, 1], image-major; the classifier).

    x (B, 3, S, S) in [-1, 1]. Unless ``classifier`` is given, one is fitted on the latents file's codes with
    their sub-folder labels (or ``labels_csv``), held-out split by source image. Each image keeps its own
    DDIM-inverted x_T, so α = 0 is its inverted reconstruction.
    """
    x = _as_batch(x, "x")
    if not alphas:
        raise ValueError("alphas must hold at least one strength")
    if classifier is None:
        classifier = fit_linear_classifier(
            latents.normalise(latents.z),
            code_labels(latents, labels_csv),
            holdout=holdout,
            seed=seed,
            groups=latents.paths,
        )
    direction = classifier.direction(target_class)
    z = model.encode(x)
    if z.shape[1] != latents.dim:
        raise ValueError(
            f"the latents file holds {latents.dim}-d codes but this model's z_sem is "
            f"{z.shape[1]}-d (made with another autoencoder?)"
        )
    x_T = model.encode_stochastic(x, z, T=T, progress=progress)
    codes = shift_codes(latents, z, direction, alphas)
    images = render_batched(model, x_T.repeat_interleave(len(alphas), 0), codes, T, batch_size, progress)
    return images, classifier
