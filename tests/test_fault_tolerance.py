"""Fault tolerance: pre-emption, kill -9 and resume, NaN, a dead rank, unsafe and half-written checkpoints.

Each test reproduces the fault for real (signals to the training processes, a process killed mid-write, a
pickle that would run code) and fails without the feature it covers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_config
from test_ddp import CSV, DDP_TINY, children, finish, logged_steps, one_thread, run, start, wait_for_steps

from rockgen.callbacks.checkpoint import non_finite_tensors
from rockgen.lit.checkpoint import CheckpointError, read_checkpoint
from rockgen.tasks.train import train

pytestmark = pytest.mark.usefixtures(one_thread.__name__)
LONG = ["trainer.max_steps=1000", "callbacks.checkpoint.every_n_train_steps=1000", "trainer.val_check_interval=1000"]


def ckpt_step(path: Path) -> int:
    return int(read_checkpoint(path)["global_step"])


@pytest.mark.slow
def test_sigterm_saves_last_checkpoint_at_the_next_step_and_exits_cleanly(tmp_path):
    """SIGTERM to rank 0 only (as `kill <pid>` or a container stop sends it): both ranks save and exit 0."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = start(["bash", "scripts/train.sh", "2", *DDP_TINY, *CSV, *LONG, f"hydra.run.dir={run_dir}"], log)
    wait_for_steps(proc, run_dir, log, 2)
    reached = logged_steps(run_dir)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # train.sh execs python: this is rank 0
    out = finish(proc, log, timeout=120)
    elapsed = time.monotonic() - sent
    assert proc.returncode == 0, out[-4000:]
    assert "Received SIGTERM: saved" in out and "Run the same command to resume" in out
    assert "Traceback" not in out
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]  # nothing periodic yet
    step = ckpt_step(run_dir / "checkpoints" / "last.ckpt")
    assert step >= reached
    print(f"SIGTERM to exit: {elapsed:.1f} s (checkpoint at step {step})")
    assert elapsed < 60


@pytest.mark.slow
def test_a_dead_rank_fails_the_whole_job_quickly(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    proc = start(["bash", "scripts/train.sh", "2", *DDP_TINY, *CSV, *LONG, f"hydra.run.dir={run_dir}"], log)
    wait_for_steps(proc, run_dir, log, 2)
    rank1 = [pid for pid in children(proc.pid) if b"run.py" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(rank1) == 1, "Lightning should have started exactly one child rank"
    killed = time.monotonic()
    os.kill(rank1[0], signal.SIGKILL)  # the node or process is lost without a word
    out = finish(proc, log, timeout=90)
    elapsed = time.monotonic() - killed
    assert proc.returncode != 0, out[-4000:]
    print(f"rank 1 killed -> job exited with {proc.returncode} after {elapsed:.1f} s")
    assert elapsed < 60


@pytest.mark.slow
def test_nan_loss_on_one_rank_stops_every_rank_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    poison = [
        "model._target_=run_hooks.PoisonedLitModel",
        "+model.poison=data",
        "+model.poison_step=2",
        "+model.poison_rank=1",
    ]
    cmd = [
        "bash",
        "scripts/train.sh",
        "2",
        *DDP_TINY,
        "logger=csv",
        *poison,
        "trainer.max_steps=6",
        "trainer.limit_val_batches=0",
        f"hydra.run.dir={run_dir}",
    ]
    out = run(cmd, log, timeout=180)
    assert "non-finite training loss (nan) at global step 2" in out, out[-4000:]
    assert "last good checkpoint" in out
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt", "step0000002.ckpt"]
    last = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())


def test_a_diverged_model_is_never_checkpointed(tmp_path):
    """A NaN weight after a finite-loss step (an overflowing update): the save is refused, last.ckpt stays good."""
    poison = ["model._target_=run_hooks.PoisonedLitModel", "+model.poison=weights", "+model.poison_step=3"]
    quiet = ["trainer.max_steps=6", "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false"]
    cfg = compose_config([*TINY, *poison, *quiet], tmp_path)
    with pytest.raises(FloatingPointError, match=r"not saving step0000004.ckpt at global step 4: .*model\.decoder"):
        train(cfg)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step0000002.ckpt"]
    last = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())


def test_non_finite_tensors_names_parameters_and_buffers():
    net = torch.nn.BatchNorm1d(3)
    assert non_finite_tensors(net) == []
    with torch.no_grad():
        net.weight[1] = float("inf")
        net.running_mean[0] = float("nan")
    assert non_finite_tensors(net) == ["weight", "running_mean"]


@pytest.mark.slow
def test_kill_9_mid_run_then_the_same_command_resumes_from_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    every = 2
    cmd = [
        sys.executable,
        "run.py",
        *DDP_TINY,
        *CSV,
        "trainer.max_steps=8",
        f"hydra.run.dir={run_dir}",
        f"callbacks.checkpoint.every_n_train_steps={every}",
        "trainer.limit_val_batches=0",
    ]
    log = tmp_path / "first.txt"
    proc = start(cmd, log)
    wait_for_steps(proc, run_dir, log, 5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    reached = logged_steps(run_dir)
    saved = ckpt_step(run_dir / "checkpoints" / "last.ckpt")
    assert reached - saved <= every, f"lost {reached - saved} steps, more than one checkpoint interval"
    out = run(cmd, tmp_path / "second.txt")  # the very same command
    assert f"Resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in out, out[-4000:]
    assert ckpt_step(run_dir / "checkpoints" / "last.ckpt") == 8
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["version_0", "version_1"]


# ---------------------------------------------------------------------------------------- checkpoint files
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny 3-step run: its checkpoints are the good files the tests below tamper with."""
    run_dir = tmp_path_factory.mktemp("trained")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(compose_config([*TINY, "trainer.enable_progress_bar=false"], run_dir))
    finally:
        torch.set_num_threads(before)
    return run_dir


class OpensAFile:
    """Unpickling this object calls ``open(marker, "w")``: a stand-in for code a malicious file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def tampered(trained_run: Path, tmp_path: Path, payload: object) -> Path:
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["payload"] = payload
    path = tmp_path / "tampered.ckpt"
    torch.save(ckpt, path)
    return path


def test_resume_refuses_a_checkpoint_with_pickled_code(trained_run, tmp_path):
    marker = tmp_path / "code-was-run"
    evil = tampered(trained_run, tmp_path, OpensAFile(marker))
    cfg = compose_config([*TINY, f"ckpt_path={evil}", "trainer.max_steps=4"], tmp_path / "run")
    with pytest.raises(CheckpointError, match="weights_only loading refuses .* trusted_checkpoint=true"):
        train(cfg)
    assert not marker.exists(), "loading the checkpoint ran the code inside it"


def test_trusted_checkpoint_flag_resumes_from_a_legacy_pickle(trained_run, tmp_path):
    """Old Lightning checkpoints pickled argparse.Namespace hyper-parameters: refused unless trusted."""
    legacy = tampered(trained_run, tmp_path, argparse.Namespace(lr=1e-4))
    with pytest.raises(CheckpointError):
        read_checkpoint(legacy)
    cfg = compose_config(
        [
            *TINY,
            f"ckpt_path={legacy}",
            "trainer.max_steps=4",
            "trusted_checkpoint=true",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "run",
    )
    assert train(cfg)["trainer"].global_step == 4


CRASH_MID_WRITE = """
import io, os, signal, sys, torch
from rockgen.lit.checkpoint import SafeCheckpointIO
path = sys.argv[1]
plugin = SafeCheckpointIO()
plugin.save_checkpoint({"global_step": 1, "w": torch.arange(100_000.0)}, path)
real_save = torch.save
def save_half_then_die(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the machine goes away in the middle of the write
torch.save = save_half_then_die
plugin.save_checkpoint({"global_step": 2, "w": torch.zeros(100_000)}, path)
"""


def test_a_kill_in_the_middle_of_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.run([sys.executable, "-c", CRASH_MID_WRITE, str(path)], cwd=ROOT, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    ckpt = read_checkpoint(path)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["w"], torch.arange(100_000.0))
    with pytest.raises(CheckpointError):  # the half-written file is the .tmp, never the checkpoint itself
        (tmp,) = tmp_path.glob("last.ckpt.*.tmp")  # one temp name per writer (PID)
        read_checkpoint(tmp)


def test_resume_ignores_and_removes_a_half_written_tmp_file(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    stale = run_dir / "checkpoints" / "last.ckpt.tmp"
    stale.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    out = train(compose_config([*TINY, "trainer.max_steps=4", "trainer.enable_progress_bar=false"], run_dir))
    assert out["trainer"].global_step == 4 and not stale.exists()
    assert ckpt_step(run_dir / "checkpoints" / "last.ckpt") == 4
