"""What the explorer can do with one DiffAE checkpoint, free of any UI: sample, reconstruct, interpolate, ... mosaic.

Every action runs as one job of a :class:`~rockgen.explore.jobs.JobRunner` (one at a time, cancellable, with
progress) and returns images (N, 3, H, W) in [0, 1] on the CPU plus a short description. Interpolation and
manipulation are ``rockgen.latent_ops.interpolate`` / ``manipulate``, as in ``task=interpolate`` /
``task=manipulate``; inpainting and mosaics are ``rockgen.inpaint.inpaint_image`` and
``rockgen.mosaic.diffae_mosaic``, as in ``task=inpaint`` / ``task=mosaic``. What a checkpoint offers (latent
sampling, classes, guidance, samplers) is found by feature checks, so checkpoints of other stages or versions
degrade to a message instead of failing:

    service = ExploreService(model, latents=load_latents("latents.pt"))
    service.features.can_sample, service.features.sample_message
    images, info = service.sample(8, seed=0, T=20, T_latent=20)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from rockgen.data.images import ImageReadError, image_size
from rockgen.explore.canvas import load_canvas, preset_mask
from rockgen.explore.features import ExploreSettings, detect_features
from rockgen.explore.jobs import JobRunner, ProgressFn
from rockgen.inpaint import check_mask, inpaint_image, load_mask
from rockgen.latent_ops import FITS, LinearClassifier, code_labels, fit_linear_classifier, interpolate, manipulate
from rockgen.latent_ops import load_image_tensor as _load_image_tensor
from rockgen.latents import Latents
from rockgen.mosaic import MosaicModel, diffae_mosaic, window_origins


def psnr(pred01: torch.Tensor, target01: torch.Tensor) -> list[float]:
    """Per-image PSNR (dB, data range 1) of (B, 3, H, W) in [0, 1] (torchmetrics, as in validation)."""
    per = peak_signal_noise_ratio(
        pred01.float().clamp(0, 1), target01.float().clamp(0, 1), data_range=1.0, dim=(1, 2, 3), reduction="none"
    )
    return [float(v) for v in per.reshape(-1)]


def describe_fit(path: str | Path, size: int, fit: str) -> str:
    """How a file becomes the model's S×S input, e.g. '40×60 px → central 32×32 crop'."""
    w, h = image_size(path)
    if (w, h) == (size, size):
        return f"{w}×{h} px, used as is"
    if fit == "crop" and min(w, h) >= size:
        return f"{w}×{h} px → central {size}×{size} crop at native resolution"
    return f"{w}×{h} px → resized (shorter side {size}, Lanczos) and centre-cropped to {size}×{size}"


class ExploreService:
    """One loaded DiffAE (+ optional latents file) and the actions of the explorer, run one job at a time."""

    def __init__(
        self,
        model,
        latents: Latents | None = None,
        labels_csv: str | None = None,
        settings: ExploreSettings | None = None,
        **overrides: Any,
    ) -> None:
        """``overrides``: fields of ``settings`` by name (e.g. ``ExploreService(model, max_mosaic_pixels=1024)``)."""
        opts = dataclasses.replace(settings or ExploreSettings(), **overrides)
        if opts.fit not in FITS:
            raise ValueError(f"fit: must be one of {FITS}, got {opts.fit!r}")
        self.model = model.eval()
        self.latents = latents
        self.fit = opts.fit
        self.max_images = int(opts.max_images)
        self.batch_size = int(opts.batch_size)
        self.max_mosaic_pixels = int(opts.max_mosaic_pixels)
        self.image_size = int(model.image_size)
        self._labels = (
            code_labels(latents, labels_csv) if latents is not None and _has_labels(latents, labels_csv) else None
        )
        self.features = detect_features(model, latents, self._labels)
        self._holdout, self._seed = float(opts.holdout), int(opts.seed)
        self._classifier: LinearClassifier | None = None
        ema = model.ema_model
        nets = [ema.encoder, ema.decoder] + ([ema.latent_net] if getattr(ema, "latent_net", None) is not None else [])
        self.jobs = JobRunner(nets)

    # ------------------------------------------------------------------------------------------ inputs
    def load_image(self, path: str | Path | None, what: str = "image") -> tuple[torch.Tensor, str]:
        """An uploaded/picked file as (1, 3, S, S) in [-1, 1] and how it was fitted; clear errors name it."""
        if not path:
            raise ValueError(f"{what}: upload an image or pick a tile first")
        try:
            x = _load_image_tensor(path, self.image_size, fit=self.fit)
        except (ImageReadError, FileNotFoundError) as err:
            raise ValueError(f"{what}: not a readable image ({Path(str(path)).name}): {err}") from None
        return x, describe_fit(path, self.image_size, self.fit)

    def _check_steps(self, T: Any, name: str = "steps") -> int:
        if T is None or int(T) < 1 or int(T) != float(T):
            raise ValueError(f"{name}: a whole number of DDIM steps >= 1, got {T!r}")
        return int(T)

    # ------------------------------------------------------------------------------------------ actions
    def sample(
        self,
        n: int,
        seed: int,
        T: int,
        T_latent: int,
        sampler: str = "ddim",
        cls: str | None = None,
        guidance: float | None = None,
        progress: ProgressFn | None = None,
    ) -> tuple[torch.Tensor, str]:
        """n new tiles (n, 3, S, S) in [0, 1] from ``seed``: latent DDIM (T_latent steps) → decoder (T steps)."""
        if not self.features.can_sample:
            raise ValueError(self.features.sample_message)
        n, T, T_latent = int(n), self._check_steps(T), self._check_steps(T_latent, "latent steps")
        if not 1 <= n <= self.max_images:
            raise ValueError(f"number of tiles: 1 … {self.max_images}, got {n}")
        if sampler not in self.features.samplers:
            raise ValueError(f"sampler: this checkpoint offers {self.features.samplers}, got {sampler!r}")
        kwargs: dict[str, Any] = {}
        if "sampler" in self.model.sample_options:
            kwargs["sampler"] = sampler
        if cls and not self.features.classes:
            raise ValueError(f"class {cls!r}: this checkpoint's latent DDIM is unconditional (no classes)")
        if cls and self.features.classes:
            kwargs["cls"] = cls
            if self.features.guidance and guidance is not None:
                kwargs["guidance"] = float(guidance)
        fn = lambda: self.model.sample(n, self.model.device, T=T, T_latent=T_latent, seed=int(seed), **kwargs).cpu()  # noqa: E731
        images, took = self._timed("sample", T_latent + T, fn, progress)
        extra = (
            f", class {cls!r}" + (f", guidance {kwargs['guidance']:g}" if "guidance" in kwargs else "") if cls else ""
        )
        name = sampler.upper()
        return images, f"{n} tiles, seed {seed}, latent {name}-{T_latent} + {name}-{T}{extra}: {took:.2f} s"

    def reconstruct(
        self, path: str | Path | None, T: int, seed: int = 0, progress: ProgressFn | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Images (3, 3, S, S): the input, its inferred-x_T reconstruction, its z_sem-only (random x_T) one.

        Inferred x_T = DDIM inversion of the input with its own z_sem (T steps); "z_sem only" renders the same
        z_sem from x_T ~ N(0, I) drawn with ``seed``: what the semantic code alone keeps.
        """
        x, fitted = self.load_image(path)
        T = self._check_steps(T)
        m = self.model

        def run() -> torch.Tensor:
            z = m.encode(x)
            x_T = m.encode_stochastic(x, z, T=T)
            gen = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(x.shape, generator=gen).to(x_T)
            return m.render(torch.cat([x_T, noise]), torch.cat([z, z]), T=T).cpu()

        recs, took = self._timed("reconstruct", 1 + 2 * T, run, progress)
        original = (x + 1) / 2
        scores = psnr(recs, original.expand_as(recs))
        info = {"fit": fitted, "psnr_inferred": scores[0], "psnr_zsem_only": scores[1], "seconds": took}
        return torch.cat([original, recs]), info

    def interpolate(
        self,
        path_a: str | Path | None,
        path_b: str | Path | None,
        frames: int,
        T: int,
        progress: ProgressFn | None = None,
    ) -> tuple[torch.Tensor, str]:
        """Frames (frames, 3, S, S) from a to b: z_sem lerped, inverted x_T slerped (``latent_ops.interpolate``)."""
        x_a, fit_a = self.load_image(path_a, "tile A")
        x_b, fit_b = self.load_image(path_b, "tile B")
        T, frames = self._check_steps(T), int(frames)
        if not 2 <= frames <= self.max_images:
            raise ValueError(f"frames: 2 … {self.max_images}, got {frames}")
        calls = 1 + T + math.ceil(frames / self.batch_size) * T
        fn = lambda: interpolate(self.model, x_a, x_b, frames=frames, T=T, batch_size=self.batch_size)  # noqa: E731
        out, took = self._timed("interpolate", calls, fn, progress)
        return out, f"{frames} frames, DDIM-{T}: {took:.2f} s (A: {fit_a}; B: {fit_b})"

    def classifier(self) -> LinearClassifier:
        """The softmax classifier on the latents file's z-normalised codes (fitted once, as task=manipulate)."""
        if not self.features.can_manipulate:
            raise ValueError(self.features.manipulate_message)
        if self._classifier is None:
            lat = self.latents
            self._classifier = fit_linear_classifier(
                lat.normalise(lat.z), self._labels, holdout=self._holdout, seed=self._seed, groups=lat.paths
            )
        return self._classifier

    def manipulate(
        self,
        path: str | Path | None,
        target_class: str,
        alpha: float,
        T: int,
        progress: ProgressFn | None = None,
    ) -> tuple[torch.Tensor, str]:
        """Images (3, 3, S, S): the input, its reconstruction (α = 0) and the render at α along the class."""
        if not self.features.can_manipulate:
            raise ValueError(self.features.manipulate_message)
        if target_class not in self.features.manipulate_classes:
            raise ValueError(f"target class: one of {self.features.manipulate_classes}, got {target_class!r}")
        x, fitted = self.load_image(path)
        T, alpha = self._check_steps(T), float(alpha)

        def run():  # the classifier is fitted (once) inside the job: no two threads fit it at once
            kw = {"T": T, "classifier": self.classifier(), "batch_size": self.batch_size}
            return manipulate(self.model, self.latents, x, target_class, [0.0, alpha], **kw)

        (images, clf), took = self._timed("manipulate", 1 + 2 * T, run, progress)
        acc = "n/a" if clf.heldout_accuracy is None else f"{clf.heldout_accuracy:.2f}"
        info = (
            f"towards {target_class!r}, α = {alpha:g}, DDIM-{T}: {took:.2f} s; classifier held-out accuracy {acc} "
            f"over classes {clf.classes} ({fitted})"
        )
        return torch.cat([(x + 1) / 2, images]), info

    def inpaint(
        self,
        path: str | Path | None,
        mask_path: str | Path | None = None,
        preset: str = "centre square",
        size: float = 0.4,
        T: int = 20,
        seed: int = 0,
        resample: int = 1,
        progress: ProgressFn | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        """Fill a hole of an image at native resolution → input (1, 3, H, W), mask (1, 1, H, W), result, in [0, 1].

        The mask is ``mask_path`` (nonzero = fill; same size as the image) or else ``preset`` of ``size``
        (random holes placed by ``seed``); z_sem comes from the real pixels, as ``task=inpaint``.
        """
        x = load_canvas(path, self.image_size, self.max_mosaic_pixels)
        T, resample = self._check_steps(T), int(resample)
        if not 1 <= resample <= 10:
            raise ValueError(f"resample: 1 … 10 RePaint jumps per step, got {resample}")
        h, w = x.shape[-2:]
        if mask_path:
            mask, source = load_mask(mask_path), f"mask {Path(str(mask_path)).name}"
        else:
            mask, source = preset_mask(preset, h, w, float(size), int(seed)), f"{preset} mask ({float(size):g})"
        check_mask(mask, x, source, f"image {Path(str(path)).name}")
        overlap = self.image_size // 4
        windows = len(window_origins(h, self.image_size, overlap)) * len(window_origins(w, self.image_size, overlap))
        chunks = math.ceil(windows / self.batch_size)
        kw = {"resample": resample, "seed": int(seed), "overlap": overlap, "window_batch": self.batch_size}
        fn = lambda: inpaint_image(self.model, x, mask, T, **kw).cpu()  # noqa: E731
        out, took = self._timed("inpaint", chunks + T * resample * chunks, fn, progress)
        info = (
            f"{w}×{h} px ({windows} window{'s' * (windows > 1)}), {source}: {int(mask.sum())} px filled; "
            f"DDIM-{T}, resample {resample}, seed {seed}: {took:.2f} s"
        )
        return (x + 1) / 2, mask, ((out + 1) / 2).clamp(0, 1), info

    def mosaic(
        self,
        width: int,
        height: int,
        seed: int,
        T: int,
        z_sem: str = "shared",
        path: str | Path | None = None,
        T_latent: int = 20,
        window_batch: int = 16,
        progress: ProgressFn | None = None,
    ) -> tuple[torch.Tensor, str]:
        """A (1, 3, height, width) mosaic in [0, 1] by MultiDiffusion (``task=mosaic``'s code).

        z_sem: shared = the code of the tile ``path`` (or, without one, a latent-DDIM draw), field = latent-DDIM
        codes at anchors, smoothly interpolated (needs the latent stage).
        """
        width, height, T, T_latent = int(width), int(height), self._check_steps(T), int(T_latent)
        if z_sem not in ("shared", "field"):
            raise ValueError(f"z_sem: shared or field, got {z_sem!r}")
        if width * height > self.max_mosaic_pixels:
            raise ValueError(
                f"mosaic: {width}×{height} = {width * height} px is more than max_mosaic_pixels="
                f"{self.max_mosaic_pixels} (a setting of task=explore)"
            )
        if int(window_batch) < 1:
            raise ValueError(f"window batch: at least 1, got {window_batch}")
        z_tile, source = None, "latent-DDIM draws" if z_sem == "field" else "a latent-DDIM draw"
        if z_sem == "shared" and path:
            z_tile, fitted = self.load_image(path, "z_sem tile")
            source = f"the tile {Path(str(path)).name} ({fitted})"
        elif not self.features.can_sample:
            raise ValueError(
                f"z_sem={z_sem} is off: this checkpoint has no trained latent DDIM (stage 2) to draw codes from. "
                + ("Upload or pick a tile for the shared z_sem, or open" if z_sem == "shared" else "Use z_sem=shared "
                   "with a tile, or open") + " a template=demo_latent (or rock*_latent) checkpoint."
            )  # fmt: skip
        s = self.image_size
        layout = MosaicModel(None, height, width, s, s // 4, int(window_batch))  # checks the size; counts windows
        chunks = math.ceil(len(layout.origins) / int(window_batch))
        calls = (1 if z_tile is not None else T_latent) + T * chunks
        fn = lambda: diffae_mosaic(  # noqa: E731
            self.model, height, width, T, seed=int(seed), z_sem=z_sem, z_tile=z_tile, T_latent=T_latent,
            window_batch=int(window_batch), progress=False,
        )[0].cpu()  # fmt: skip
        out, took = self._timed("mosaic", calls, fn, progress)
        gy, gx = layout.grid
        info = (
            f"{width}×{height} px, {gy}×{gx} windows of {s} px, z_sem {z_sem} from {source}, seed {seed}, "
            f"DDIM-{T}: {took:.2f} s"
        )
        return ((out + 1) / 2).clamp(0, 1), info

    def cancel(self) -> str:
        name = self.jobs.cancel()
        return f"cancelling {name} …" if name else "nothing is running"

    def _timed(self, name: str, calls: int, fn, progress: ProgressFn | None):
        start = time.perf_counter()
        with torch.no_grad():
            out = self.jobs.run(name, calls, fn, progress)
        return out, time.perf_counter() - start


def _has_labels(latents: Latents, labels_csv: str | None) -> bool:
    return bool(labels_csv) or any(latents.labels)


def tile_choices(latents: Latents | None, extra: Sequence[str | Path] = (), limit: int = 200) -> list[str]:
    """Existing image files to pick from: ``extra`` first, then the latents file's images (≤ ``limit``)."""
    out: list[str] = []
    for p in [*map(str, extra), *(latents.paths if latents is not None else [])]:
        if p not in out and Path(p).is_file():
            out.append(p)
        if len(out) >= limit:
            break
    return out
