"""End to end: the Hydra app trains the tiny demo, writes its outputs, resumes, and the checkpoint loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose_config

from rockgen.config import OptimConf
from rockgen.lit.common import build_optimizer, fused_supported
from rockgen.lit.diffae import LitModel
from rockgen.tasks.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests of this file: 3 steps, validation and checkpoints."""
    run_dir = tmp_path_factory.mktemp("run")
    from conftest import TINY

    out = train(compose_config(TINY, run_dir))
    return run_dir, out


def test_run_directory_has_checkpoint_grid_and_metrics(trained):
    run_dir, out = trained
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (run_dir / "images").glob("val_step*.png")) == ["val_step0000003.png"]
    from PIL import Image

    grid = Image.open(run_dir / "images" / "val_step0000003.png")
    assert grid.height >= 3 * 96 and grid.width >= 2 * 96  # originals | inferred | random, 32-px tiles shown ×3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    for key in ("val/psnr", "val/ssim", "val/inferred_T2/psnr", "val/random_T2/ssim", "train/loss"):
        assert key in metrics, key
    assert "val/lpips" not in metrics  # no AlexNet weights in the test TORCH_HOME: never a fake LPIPS
    assert (run_dir / "csv" / "version_0" / "metrics.csv").is_file()


def test_resume_continues_step_count_and_optimizer(trained, tiny_overrides):
    run_dir, out = trained
    before = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    res = train(compose_config([*tiny_overrides, "trainer.max_steps=5"], run_dir))
    assert res["trainer"].global_step == 5
    after = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert before["global_step"] == 3 and after["global_step"] == 5
    # Adam's step counter continued from the checkpoint instead of restarting at 0
    steps = {float(s["step"]) for s in after["optimizer_states"][0]["state"].values()}
    assert steps == {5.0}


def test_training_uses_fused_adamw_on_cpu_and_it_matches_the_reference_update(trained):
    run_dir, out = trained
    opt = out["trainer"].optimizers[0]
    assert opt.param_groups[0]["fused"] is True  # OptimConf.fused=None (auto) on CPU, 32-true
    torch.manual_seed(0)
    weights = [torch.randn(300, dtype=torch.float64) for _ in range(3)]
    results = []
    for fused in (True, False):  # fused kernel vs torch's per-tensor loop, three steps in float64
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        conf = OptimConf(lr=1e-2, weight_decay=0.1, fused=fused)
        opt = build_optimizer(params, conf)["optimizer"]
        assert bool(opt.param_groups[0]["fused"]) is fused
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = torch.sin(p.detach() * (step + 1) + i)
            opt.step()
        results.append(torch.cat([p.detach() for p in params]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


def test_gradients_are_freed_after_each_optimizer_step(trained):
    _, out = trained
    params = list(out["trainer"].lightning_module.model.parameters())
    assert params and all(p.grad is None for p in params)  # not held through the next forward pass


def test_fused_is_off_where_lightning_cannot_use_it():
    cpu = [torch.nn.Parameter(torch.zeros(2))]
    assert fused_supported(cpu, "32-true") and fused_supported(cpu, None)
    for mixed in ("16-mixed", "bf16-mixed"):  # Lightning refuses clipping with an optimizer that unscales
        assert not fused_supported(cpu, mixed)
    assert not fused_supported([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))])
    assert (
        "fused" not in build_optimizer(cpu, OptimConf(fused=False))["optimizer"].defaults
        or not (build_optimizer(cpu, OptimConf(fused=False))["optimizer"].defaults["fused"])
    )


def test_bf16_mixed_training_clips_gradients_without_the_fused_optimizer(tmp_path, tiny_overrides):
    out = train(compose_config([*tiny_overrides, "trainer.precision=bf16-mixed", "trainer.max_steps=2"], tmp_path))
    assert out["trainer"].global_step == 2 and out["trainer"].gradient_clip_val == 1.0
    assert not out["trainer"].optimizers[0].param_groups[0]["fused"]


def test_resume_never_refuses_to_overwrite(trained, tiny_overrides):
    run_dir, _ = trained
    with pytest.raises(FileExistsError, match="resume=auto"):
        train(compose_config([*tiny_overrides, "resume=never"], run_dir))


def test_missing_checkpoint_is_a_clear_error(tmp_path, tiny_overrides):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        train(compose_config([*tiny_overrides, f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path))


def test_checkpoint_api_encode_invert_render(trained):
    run_dir, _ = trained
    model = LitModel.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, model.ema_model.encoder.cfg.out_channels) == (2, 512)  # the demo z_sem width
    x_T = model.encode_stochastic(x, z, T=5)
    assert x_T.shape == x.shape and torch.isfinite(x_T).all()
    img = model.render(x_T, z, T=5)
    assert img.shape == x.shape and img.min() >= 0 and img.max() <= 1
    with pytest.raises(ValueError, match="32x32"):
        model.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.encode(torch.full((1, 3, 32, 32), 255.0))
    with pytest.raises(RuntimeError, match="latent"):
        model.render(x_T)  # no latent DDIM in an autoencoder-only checkpoint


def test_cli_trains_prints_run_dir_and_logs_wandb_offline(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline")
    run_dir = tmp_path / "cli-run"
    from conftest import TINY

    cmd = [
        sys.executable,
        "run.py",
        *[o for o in TINY if not o.startswith("logger")],
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Run directory: {run_dir.resolve()}" in proc.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B should log offline into the run directory"
    log = (run_dir / "train.log").read_text()  # the run's log: rockgen's and Lightning's messages
    assert "Run directory" in log and "GPU available" in log, log[-2000:]


def test_unknown_key_fails_with_hydra_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "run.py", "trainer.max_stepz=3", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "max_stepz" in proc.stderr


def test_validation_grid_spans_every_batch_not_the_first_files(tmp_path):
    """The grid keeps evenly spaced tiles of all validation batches (a folder-per-class set is sorted by class)."""
    from types import SimpleNamespace

    from rockgen.config import EvalConf
    from rockgen.lit.recon_eval import ReconstructionEvaluator

    ev = ReconstructionEvaluator(EvalConf(grid_images=4))
    module = SimpleNamespace(trainer=SimpleNamespace(num_val_batches=[4]))
    for b in range(4):  # 4 batches of 8 tiles whose value is their index in the validation set
        x = torch.arange(8 * b, 8 * b + 8, dtype=torch.float32)[:, None, None, None].expand(8, 3, 2, 2)
        ev._keep_for_grid(module, [x, x], b)
    firsts = ev._grid[0][:, 0, 0, 0].tolist()
    assert len(firsts) == 4 and firsts[0] == 0 and firsts[-1] >= 24  # one from each batch, first to last
