"""``task=manipulate``: move an image along a class direction of z_sem → a PNG strip over α + the classifier.

    rockgen task=manipulate ckpt_path=logs/train/demo/checkpoints/last.ckpt \\
        latents_path=logs/infer_latents/demo/latents.pt image=tile.png target_class=layered \\
        'alphas=[-0.3,0,0.3,0.6]' T=50

A softmax classifier is fitted on the z-normalised codes of the latents file, labelled by sub-folder (or
``labels_csv``); its held-out accuracy tells how linearly separable the classes are, i.e. how much to trust
the direction. Writes ``manipulation_<class>.png`` (input | one render per α) and ``classifier.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rockgen.latent_ops import code_labels, fit_linear_classifier, manipulate
from rockgen.latents import encoder_fingerprint, load_latents
from rockgen.tasks import write_json
from rockgen.tasks.common import save_strip, setting_image
from rockgen.tasks.interpolate import load_autoencoder


def _file_part(name: str) -> str:
    """A class name safe inside a file name (nested sub-folders ``site/layered`` → ``site_layered``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def manipulate_task(cfg: DictConfig) -> dict[str, Any]:
    """Fit the classifier, report it, render the image at each α; write the strip and ``classifier.json``."""
    run_dir = Path(cfg.paths.run_dir)
    if not cfg.latents_path:
        raise ValueError(
            "latents_path: give the latents file of this autoencoder (rockgen task=infer_latents ckpt_path=...)"
        )
    if not Path(cfg.latents_path).expanduser().is_file():
        raise FileNotFoundError(f"latents_path: latents file not found: {cfg.latents_path}")
    model = load_autoencoder(cfg, "manipulate")
    latents = load_latents(
        Path(cfg.latents_path).expanduser(), expect_fingerprint=encoder_fingerprint(model.ema_model.encoder)
    )
    x = setting_image(cfg, "image", model.image_size)
    if not cfg.alphas:
        raise ValueError("alphas: give at least one strength, e.g. 'alphas=[-0.3,0,0.3,0.6]'")
    alphas = [float(a) for a in cfg.alphas]

    labels = code_labels(latents, cfg.labels_csv)
    clf = fit_linear_classifier(
        latents.normalise(latents.z),
        labels,
        holdout=float(cfg.holdout),
        seed=int(cfg.seed),
        epochs=int(cfg.classifier_iters),
        l2=float(cfg.l2),
        groups=latents.paths,
    )
    acc = "n/a (nothing held out)" if clf.heldout_accuracy is None else f"{clf.heldout_accuracy:.3f}"
    print(
        f"Classifier on {sum(clf.counts.values())} codes, classes {clf.classes}: held-out accuracy {acc} "
        f"({sum(clf.heldout_counts.values())} held-out codes; train accuracy {clf.train_accuracy:.3f})",
        flush=True,
    )
    report = {
        **clf.summary(),
        "target_class": cfg.target_class,
        "alphas": alphas,
        "step": "z_norm' = z_norm + alpha * sqrt(D) * unit(w_target - mean_k w_k)",
        "D": latents.dim,
        "labels": str(cfg.labels_csv) if cfg.labels_csv else "sub-folder names",
        "unlabelled_codes": sum(lab is None for lab in labels),
        "latents_path": str(cfg.latents_path),
        "ckpt_path": str(cfg.ckpt_path),
        "holdout": float(cfg.holdout),
        "seed": int(cfg.seed),
    }
    write_json(run_dir / "classifier.json", report)
    if not cfg.target_class:
        raise ValueError(f"target_class: choose the class to move towards, one of {clf.classes}")

    images, _ = manipulate(
        model,
        latents,
        x,
        str(cfg.target_class),
        alphas,
        T=cfg.T,
        classifier=clf,
        batch_size=int(cfg.batch_size),
        progress=True,
    )
    png = save_strip(
        images,
        run_dir / f"manipulation_{_file_part(str(cfg.target_class))}.png",
        first=(x + 1) / 2 if cfg.show_input else None,
        size=cfg.target_size,
    )
    print(
        f"Manipulation strip ({len(alphas)} alphas {alphas}): {png}\nClassifier report: {run_dir / 'classifier.json'}",
        flush=True,
    )
    return {"run_dir": run_dir, "png": png, "images": images, "classifier": clf}
