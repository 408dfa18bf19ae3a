"""Class directions in z_sem: labels, the linear classifier, the α-shift, manipulation and ``task=manipulate``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose_config
from latent_models import demo_tiles, random_diffae, save_checkpoint
from PIL import Image

from rockgen.latent_ops import (
    code_labels,
    fit_linear_classifier,
    load_image_tensor,
    manipulate,
    match_labels,
    read_labels_csv,
    shift_codes,
    stratified_split,
)
from rockgen.latents import Latents, encoder_fingerprint, latent_stats, save_latents
from rockgen.tasks import run_task

T = 3


def _latents(z: torch.Tensor, paths: list[str], labels: list[str], fingerprint: str = "x") -> Latents:
    mean, std = latent_stats(z)
    return Latents(z=z, paths=paths, labels=labels, mean=mean, std=std, fingerprint=fingerprint)


def _blobs(n_per_class: int = 40, dim: int = 16, classes=("cobbles", "gravel", "layered"), seed: int = 0):
    """Separable synthetic codes: class k is N(4·e_k, I)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.cat([torch.randn(n_per_class, dim, generator=g) + 4 * torch.eye(dim)[k] for k in range(len(classes))])
    return z, [c for c in classes for _ in range(n_per_class)]


# ---------------------------------------------------------------------------------------------- classifier
def test_classifier_separates_separable_codes_and_reports_held_out_accuracy():
    z, labels = _blobs()
    clf = fit_linear_classifier(z, labels, holdout=0.25, seed=0)
    assert clf.classes == ["cobbles", "gravel", "layered"]
    assert clf.weights.shape == (3, 16) and clf.bias.shape == (3,)
    assert clf.heldout_accuracy is not None and clf.heldout_accuracy >= 0.95
    assert clf.counts == {"cobbles": 40, "gravel": 40, "layered": 40}
    assert clf.heldout_counts == {"cobbles": 10, "gravel": 10, "layered": 10}
    assert clf.summary()["heldout_accuracy"] == clf.heldout_accuracy
    again = fit_linear_classifier(z, labels, holdout=0.25, seed=0)
    assert torch.equal(again.weights, clf.weights)  # deterministic


def test_held_out_accuracy_is_near_chance_for_random_labels():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(200, 64, generator=g)
    labels = ["a" if bool(v) else "b" for v in torch.randint(0, 2, (200,), generator=g)]
    clf = fit_linear_classifier(z, labels, holdout=0.3)
    assert clf.train_accuracy > 0.75 and clf.heldout_accuracy < 0.75  # it memorises but does not generalise


def test_class_direction_points_from_the_other_classes_to_the_target():
    z, labels = _blobs()
    clf = fit_linear_classifier(z, labels)
    d = clf.direction("gravel")
    assert math.isclose(float(d.norm()), 1.0, rel_tol=1e-6)
    centre = lambda c: z[[i for i, lab in enumerate(labels) if lab == c]].mean(0)  # noqa: E731
    towards = centre("gravel") - (centre("cobbles") + centre("layered")) / 2
    assert float(d @ towards / towards.norm()) > 0.9
    # two classes: the direction is the normal of the decision boundary, w_target − w_other
    two = fit_linear_classifier(z[:80], labels[:80])
    w = two.weights[1] - two.weights[0]
    torch.testing.assert_close(two.direction("gravel"), w / w.norm())
    torch.testing.assert_close(two.direction("cobbles"), -w / w.norm())


def test_stratified_split_is_deterministic_per_class_and_keeps_groups_together():
    labels = ["a"] * 20 + ["b"] * 10
    groups = [f"img{i // 2}" for i in range(30)]  # two tiles per source image
    train, held = stratified_split(labels, 0.2, seed=0, groups=groups)
    assert sorted(train + held) == list(range(30))
    assert sum(labels[i] == "a" for i in held) == 4 and sum(labels[i] == "b" for i in held) == 2
    assert not {groups[i] for i in train} & {groups[i] for i in held}
    assert stratified_split(labels, 0.2, seed=0, groups=groups) == (train, held)
    assert stratified_split(labels, 0.2, seed=1, groups=groups) != (train, held)
    # a class with two images still gets one held out, a class with one keeps it for training
    _, held_small = stratified_split(["a", "a", "b"], 0.2, seed=0)
    assert held_small in ([0], [1])


def test_classifier_needs_two_classes():
    z = torch.randn(10, 4)
    with pytest.raises(ValueError, match="at least two classes.*rock"):
        fit_linear_classifier(z, ["rock"] * 10)
    with pytest.raises(ValueError, match="at least two classes"):
        fit_linear_classifier(z, [None] * 10)


def test_unknown_target_class_lists_the_known_classes():
    z, labels = _blobs(10)
    clf = fit_linear_classifier(z, labels)
    with pytest.raises(ValueError, match=r"'basalt'.*\['cobbles', 'gravel', 'layered'\]"):
        clf.direction("basalt")


# ---------------------------------------------------------------------------------------------- labels
def test_labels_come_from_sub_folders_or_a_csv(tmp_path):
    paths = ["/data/tiles/siteA/x1.png", "/data/tiles/siteA/x2.png", "/data/tiles/siteB/x1.png", "/data/y.png"]
    lat = _latents(torch.randn(4, 3), paths, ["siteA", "siteA", "siteB", ""])
    assert code_labels(lat) == ["siteA", "siteA", "siteB", None]  # top level: unlabelled
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,label\nsiteA/x1.png,layered\n/data/tiles/siteB/x1.png,granite\ny.png,layered\nelsewhere.png,gravel\n"
    )
    assert read_labels_csv(csv)["siteA/x1.png"] == "layered"
    assert code_labels(lat, csv) == ["layered", None, "granite", "layered"]


def test_label_errors_are_clear(tmp_path):
    lat = _latents(torch.randn(2, 3), ["/d/a/x.png", "/d/b/x.png"], ["", ""])
    with pytest.raises(ValueError, match="no class labels.*labels_csv"):
        code_labels(lat)
    with pytest.raises(ValueError, match="'x.png' matches 2 images"):
        match_labels(lat.paths, {"x.png": "rock"})
    with pytest.raises(ValueError, match="none of its 1 paths"):
        match_labels(lat.paths, {"zzz.png": "rock"})
    bad = tmp_path / "bad.csv"
    bad.write_text("a.png,rock,extra\n")
    with pytest.raises(ValueError, match="bad.csv:1: expected 2 columns"):
        read_labels_csv(bad)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_labels_csv(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------- the shift
def test_shift_moves_alpha_sqrt_d_along_the_direction_in_normalised_space():
    z, labels = _blobs(10)
    lat = _latents(z, [str(i) for i in range(len(z))], labels)
    d = torch.nn.functional.normalize(torch.randn(16), dim=0)
    codes = shift_codes(lat, z[:2], d, [0.0, 0.5, -1.0])
    assert codes.shape == (6, 16)
    assert torch.equal(codes[0], z[0]) and torch.equal(codes[3], z[1])  # α = 0: the code itself, exactly
    step = lat.normalise(codes[1:2]) - lat.normalise(z[:1])
    torch.testing.assert_close(step[0], 0.5 * math.sqrt(16) * d, atol=1e-5, rtol=0)
    torch.testing.assert_close(lat.normalise(codes[5:6]) - lat.normalise(z[1:2]), -4 * d[None], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- on a model
@pytest.fixture(scope="module")
def model():
    return random_diffae(seed=1)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return demo_tiles(tmp_path_factory.mktemp("demo"), per_class=3)


@pytest.fixture(scope="module")
def latents_file(model, tiles, tmp_path_factory):
    """The latents file of the demo tiles as task=infer_latents writes it (labels = sub-folders)."""
    files = [f for fs in tiles.values() for f in fs]
    z = model.encode(torch.cat([load_image_tensor(f, model.image_size) for f in files])).cpu()
    mean, std = latent_stats(z)
    lat = Latents(
        z=z,
        paths=[str(f) for f in files],
        labels=[f.parent.name for f in files],
        mean=mean,
        std=std,
        fingerprint=encoder_fingerprint(model.ema_model.encoder),
        image_size=model.image_size,
    )
    return save_latents(tmp_path_factory.mktemp("latents") / "latents.pt", lat)[0], lat


def test_alpha_zero_is_the_reconstruction_and_other_alphas_change_the_image(model, tiles, latents_file):
    _, lat = latents_file
    x = torch.cat([load_image_tensor(tiles["gravel"][0], 32), load_image_tensor(tiles["granite"][0], 32)])
    images, clf = manipulate(model, lat, x, "layered", alphas=[-0.5, 0.0, 0.5], T=T)
    assert images.shape == (6, 3, 32, 32) and set(clf.classes) == set(tiles)
    z = model.encode(x)
    rec = model.render(model.encode_stochastic(x, z, T=T), z, T=T).cpu()
    torch.testing.assert_close(images[1], rec[0], atol=1e-2, rtol=0)  # image-major: image 0 at α = 0
    torch.testing.assert_close(images[4], rec[1], atol=1e-2, rtol=0)  # image 1 at α = 0
    for moved in (images[0], images[2], images[3], images[5]):
        assert (moved - rec).abs().mean(dim=(1, 2, 3)).min() > 0.01
    assert (images[0] - images[2]).abs().mean() > 0.01  # opposite directions differ


def test_manipulate_rejects_unknown_class_before_rendering(model, tiles, latents_file):
    _, lat = latents_file
    x = load_image_tensor(tiles["gravel"][0], 32)
    with pytest.raises(ValueError, match="'basalt'.*cobbles"):
        manipulate(model, lat, x, "basalt", T=T)
    one_class = Latents(
        z=lat.z,
        paths=lat.paths,
        labels=["gravel"] * len(lat.paths),
        mean=lat.mean,
        std=lat.std,
        fingerprint=lat.fingerprint,
    )
    with pytest.raises(ValueError, match="at least two classes"):
        manipulate(model, one_class, x, "gravel", T=T)


# ---------------------------------------------------------------------------------------------- the task
@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model.ckpt")


def _task(ckpt, latents_path, image, *extra):
    return [
        "task=manipulate",
        f"ckpt_path={ckpt}",
        f"latents_path={latents_path}",
        f"image={image}",
        f"T={T}",
        "device=cpu",
        *extra,
    ]


def test_manipulate_task_writes_strip_and_classifier_report(ckpt, latents_file, tiles, tmp_path, capsys):
    path, _ = latents_file
    cfg = compose_config(
        _task(ckpt, path, tiles["cobbles"][1], "target_class=layered", "alphas=[-0.3,0,0.3]", "holdout=0.34"), tmp_path
    )
    run_task(cfg)
    with Image.open(tmp_path / "manipulation_layered.png") as im:
        assert im.size == (4 * 34 + 2, 36)  # input | 3 alphas
    report = json.loads((tmp_path / "classifier.json").read_text())
    assert report["classes"] == sorted(tiles)
    assert report["counts"] == dict.fromkeys(sorted(tiles), 3)
    assert report["heldout_counts"] == dict.fromkeys(sorted(tiles), 1)
    assert 0 <= report["heldout_accuracy"] <= 1 and report["alphas"] == [-0.3, 0.0, 0.3]
    assert f"held-out accuracy {report['heldout_accuracy']:.3f}" in capsys.readouterr().out


def test_manipulate_task_errors_name_the_setting(ckpt, latents_file, tiles, tmp_path):
    path, _ = latents_file
    image = tiles["cobbles"][0]
    with pytest.raises(FileNotFoundError, match="latents_path"):
        run_task(compose_config(_task(ckpt, tmp_path / "none.pt", image, "target_class=layered"), tmp_path))
    with pytest.raises(FileNotFoundError, match="image: image not found"):
        run_task(compose_config(_task(ckpt, path, tmp_path / "x.png", "target_class=layered"), tmp_path))
    with pytest.raises(ValueError, match=r"'basalt'.*\['cobbles'"):
        run_task(compose_config(_task(ckpt, path, image, "target_class=basalt"), tmp_path))
    with pytest.raises(ValueError, match="target_class: choose"):
        run_task(compose_config(_task(ckpt, path, image), tmp_path))
    other = save_checkpoint(random_diffae(seed=2), tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="different autoencoder"):
        run_task(compose_config(_task(other, path, image, "target_class=layered"), tmp_path))
