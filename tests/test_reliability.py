"""Reliability: one checkpoint loader honouring trusted_checkpoint, early errors naming the setting, the
run-directory lock, per-writer temp files, pre-emption inside validation, differentiable rendering."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY, compose_config
from latent_models import random_diffae

from rockgen.lit.checkpoint import CheckpointError, load_checkpoint_module, read_checkpoint, save_atomic
from rockgen.lit.common import CLASS_KEY
from rockgen.run_lock import RunDirLock, RunDirLocked


def _pixel_checkpoint(path: pathlib.Path, legacy: bool) -> pathlib.Path:
    """A demo pixel-DDPM checkpoint; ``legacy`` adds a pickled Python object that weights_only refuses."""
    from rockgen.lit.pixel import PixelDiffusion
    from rockgen.presets import presets

    args = {k: v for k, v in presets()["demo_pixel"]["model"].items() if k != "_target_"}
    model = PixelDiffusion(**args)
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 0}
    ckpt[CLASS_KEY] = "rockgen.lit.pixel:PixelDiffusion"
    if legacy:
        ckpt["origin"] = pathlib.PurePosixPath("/legacy/run")  # not a tensor or plain container
    torch.save(ckpt, path)
    return path


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    monkeypatch.setenv("ROCKGEN_TRUSTED_CHECKPOINT", "0")


def test_a_text_file_as_checkpoint_gets_a_clear_message(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("experiment log, not weights\n")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_checkpoint(path)


def test_generate_honours_trusted_checkpoint(tmp_path):
    """task=generate on a legacy pickle: refused by default, loaded with trusted_checkpoint=true."""
    from rockgen.tasks import run_task

    ckpt = _pixel_checkpoint(tmp_path / "legacy.ckpt", legacy=True)
    base = ["task=generate", f"ckpt_path={ckpt}", "num_samples=1", "batch_size=1", "T=2", "grid_size=1"]
    base += ["trainer.accelerator=cpu"]
    with pytest.raises(CheckpointError, match="ckpt_path: .*trusted_checkpoint=true"):
        run_task(compose_config(base, tmp_path / "refused"))
    run_task(compose_config([*base, "trusted_checkpoint=true"], tmp_path / "trusted"))
    assert len(list((tmp_path / "trusted" / "samples").glob("*.png"))) == 1
    assert json.loads((tmp_path / "trusted" / "samples.json").read_text())["complete"] is True


def test_load_checkpoint_module_follows_the_process_wide_setting(tmp_path, monkeypatch):
    ckpt = _pixel_checkpoint(tmp_path / "legacy.ckpt", legacy=True)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint_module(ckpt)
    monkeypatch.setenv("ROCKGEN_TRUSTED_CHECKPOINT", "1")  # what run_task sets from trusted_checkpoint
    assert type(load_checkpoint_module(ckpt)).__name__ == "PixelDiffusion"


@pytest.mark.parametrize("value", ["0", "-3"])
def test_generate_rejects_zero_steps_before_loading(tmp_path, value):
    from rockgen.tasks.generate import generate

    cfg = compose_config(["task=generate", f"ckpt_path={tmp_path / 'missing.ckpt'}", f"T={value}"], tmp_path)
    with pytest.raises(ValueError, match=rf"^T={value}: .*integer >= 1"):
        generate(cfg)


def test_image_size_mismatch_fails_before_training(tmp_path):
    from rockgen.tasks.train import train

    cfg = compose_config([*TINY, "data.image_size=33"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"data.image_size=33 .* 32 px"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


HOLD = """
import sys, time
from rockgen.run_lock import RunDirLock
lock = RunDirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_run_directory_lock_names_the_other_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=rf"in use by another rockgen process \(PID {proc.pid} "):
            RunDirLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    RunDirLock(tmp_path).acquire().release()  # the kernel dropped the dead owner's lock


def test_a_second_training_in_the_same_run_directory_is_refused(tmp_path):
    from rockgen.tasks.train import train

    run_dir = tmp_path / "run"
    with RunDirLock(run_dir):
        with pytest.raises(RunDirLocked, match=f"PID {os.getpid()}"):
            train(compose_config(TINY, run_dir))


def test_checkpoint_temp_files_are_unique_per_writer(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(pathlib.Path(src).name), real(src, dst)))
    save_atomic({"w": torch.ones(2)}, tmp_path / "last.ckpt")
    assert seen == [f"last.ckpt.{os.getpid()}.tmp"]


class _SignalInValidation:
    """Sends SIGTERM to this process at the first validation batch after training started."""

    def __init__(self) -> None:
        import pytorch_lightning as pl

        class Cb(pl.Callback):
            batches = 0
            sent = 0.0

            def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
                if trainer.sanity_checking:
                    return
                Cb.batches += 1
                if Cb.batches == 1:
                    Cb.sent = time.monotonic()
                    os.kill(os.getpid(), 15)

        self.cls = Cb


def test_sigterm_during_validation_saves_last_and_stops_within_the_batch(tmp_path):
    """Validation of 4 batches; SIGTERM arrives in the first: last.ckpt is written without finishing it."""
    from rockgen.tasks.build import build_trainer
    from rockgen.tasks.train import train  # noqa: F401  (the task's module set-up)

    probe = _SignalInValidation().cls
    over = [o for o in TINY if not o.startswith(("trainer.limit_val_batches", "data.val_max_items"))]
    over += ["trainer.limit_val_batches=4", "data.val_max_items=16", "trainer.max_steps=6", "model.evaluation.T=[4]"]
    over += ["trainer.num_sanity_val_steps=0", "callbacks.checkpoint.every_n_train_steps=100"]
    cfg = compose_config(over, tmp_path / "run")
    import hydra

    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    trainer = build_trainer(cfg, tmp_path / "run")
    trainer.callbacks.append(probe())
    with pytest.raises(SystemExit):
        trainer.fit(model, datamodule=dm)
    waited = time.monotonic() - probe.sent
    assert probe.batches == 1, "validation should stop at the signal, not run its 4 batches"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file() and read_checkpoint(last)["global_step"] == 3
    assert waited < 60, f"{waited:.0f} s from the signal to the end of the run"


def test_render_is_differentiable_through_two_ddim_steps():
    """Autograd's directional derivative of render(grad=True) = central finite differences (float64)."""
    model = random_diffae(0).double()
    model.diffusion_conf.clip_x0 = False  # a clamp has no derivative at its bounds
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)
    cond = torch.randn(1, model.ema_model.encoder.cfg.out_channels, generator=g, dtype=torch.float64)
    w = torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)
    with torch.no_grad():  # weigh only pixels well inside (0, 1): the output clamp has kinks at its bounds
        out = model.render(noise, cond, T=2)
    w = w * ((out > 0.1) & (out < 0.9))
    assert w.count_nonzero() > 50

    def f(n, c):  # a scalar of the rendered image
        return (model.render(n, c, T=2, grad=True) * w).sum()

    n, c = noise.clone().requires_grad_(True), cond.clone().requires_grad_(True)
    f(n, c).backward()
    assert n.grad is not None and c.grad is not None and c.grad.abs().sum() > 0
    dn, dc = torch.randn_like(noise, dtype=torch.float64), torch.randn_like(cond, dtype=torch.float64)
    h = 1e-5
    with torch.no_grad():
        fd = (f(noise + h * dn, cond + h * dc) - f(noise - h * dn, cond - h * dc)) / (2 * h)
    analytic = (n.grad * dn).sum() + (c.grad * dc).sum()
    assert torch.allclose(analytic, fd, rtol=5e-3, atol=1e-6), (analytic.item(), fd.item())
    with torch.no_grad():
        assert not model.render(noise, cond, T=2).requires_grad  # default: no graph
