"""Real 2-process DDP training on CPU (gloo), through the launch scripts users run and through ddp_spawn.

Each run carries the test-only ``run_hooks.Probe`` callback: every rank writes the items it trained on and a
hash of its final weights, so the tests can check that the ranks end identical, split every global batch between them
and take the right number of steps. Multi-process runs are subprocesses with a timeout (never in-process
``strategy=ddp`` inside pytest: Lightning would re-run pytest's own command line for rank 1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_config
from omegaconf import OmegaConf

from rockgen.data.datamodule import split_global_batch
from rockgen.tasks.build import build_trainer

PYTHON = sys.executable
TESTS = Path(__file__).resolve().parent
# TINY without its logger choice (each test picks one) and without a progress bar (logs go to files)
DDP_TINY = [o for o in TINY if not o.startswith("logger")] + ["trainer.enable_progress_bar=false"]
# a CSV log flushed every step: tests read it to know how far a running training got
CSV = ["logger=csv", "+logger.csv.flush_logs_every_n_steps=1"]


def probe_overrides(out_dir: Path) -> list[str]:
    return ["+callbacks.probe._target_=run_hooks.Probe", f"+callbacks.probe.out_dir={out_dir}"]


def read_probes(out_dir: Path, world: int) -> list[dict]:
    probes = [json.loads((out_dir / f"probe_rank{r}.json").read_text()) for r in range(world)]
    assert [p["rank"] for p in probes] == list(range(world))
    return probes


def check_identical_ranks_and_batches(probes: list[dict], steps: int, global_batch: int) -> None:
    """Same final weights everywhere; each step's global batch split into disjoint per-rank shares."""
    assert len({p["weights"] for p in probes}) == 1, "the ranks ended with different weights"
    world = len(probes)
    for p in probes:
        assert p["global_step"] == steps and p["world_size"] == world
        assert len(p["indices"]) == steps and all(len(b) == global_batch // world for b in p["indices"])
    for step in range(steps):
        items = [i for p in probes for i in p["indices"][step]]
        assert len(set(items)) == global_batch, f"step {step}: ranks overlap: {items}"


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread per training process, in-process and in spawned ranks (subprocesses get it from
    ``script_env``): on a shared, oversubscribed CPU two spinning OpenMP threads made training 7x slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------- subprocess helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_env(**extra: str) -> dict[str, str]:
    """The test environment for a launch script: this interpreter, ``run_hooks`` importable."""
    env = dict(os.environ, PYTHON=PYTHON, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def start(cmd: list[str], log: Path, **env: str) -> subprocess.Popen:
    """Start a command in its own process group, output to ``log``."""
    with open(log, "w") as out:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(
            cmd, cwd=ROOT, env=script_env(**env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """Wait for ``proc`` (killing its whole group on timeout); return its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"timed out after {timeout} s:\n{log.read_text()[-4000:]}")
    return log.read_text()


def run(cmd: list[str], log: Path, timeout: float = 240, **env: str) -> str:
    return finish(start(cmd, log, **env), log, timeout)


def logged_steps(run_dir: Path) -> int:
    """Highest training step in the run's CSV log (flushed every step by ``CSV``)."""
    path = run_dir / "csv" / "version_0" / "metrics.csv"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    header = lines[0].split(",") if lines else []
    if "step" not in header:
        return 0
    col = header.index("step")
    steps = [int(float(line.split(",")[col])) for line in lines[1:] if line.split(",")[col]]
    return max(steps, default=-1) + 1


def wait_for_steps(proc: subprocess.Popen, run_dir: Path, log: Path, steps: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while logged_steps(run_dir) < steps:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before step {steps}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no step {steps} after {timeout} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def tree(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_train_sh_two_ranks_identical_weights_and_nothing_written_twice(tmp_path):
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    cmd = ["bash", "scripts/train.sh", "2", *DDP_TINY, *probe_overrides(probe), f"hydra.run.dir={run_dir}"]
    out = run(cmd, tmp_path / "log.txt", WANDB_MODE="offline")
    assert "All distributed processes registered. Starting with 2 processes" in out, out[-3000:]
    assert f"Run directory: {run_dir.resolve()}" in out
    check_identical_ranks_and_batches(read_probes(probe, 2), steps=3, global_batch=4)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["global_step"], metrics["world_size"], metrics["samples_seen"]) == (3, 2, 12)
    # rank 0 writes every artefact once; rank 1 only its own log file
    files = tree(run_dir)
    top = {f.split("/")[0] for f in files}
    assert top == {
        ".hydra",
        ".rockgen.lock",  # the run-directory lock (flock; the file stays, the lock dies with the process)
        "checkpoints",
        "csv",
        "images",
        "wandb",
        "metrics.json",
        "train.log",
        "train_ddp_process_1.log",
    }, sorted(files)
    assert {f for f in files if f.startswith("checkpoints/")} == {
        "checkpoints/last.ckpt",
        "checkpoints/step0000002.ckpt",
    }
    assert {f for f in files if f.startswith("images/")} == {"images/val_step0000003.png"}
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["version_0"]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
def test_ddp_spawn_in_process(tmp_path, one_thread):
    from rockgen.tasks.train import train

    probe = tmp_path / "probe"
    overrides = [*TINY, "strategy=ddp_spawn", "trainer.devices=2", "trainer.limit_val_batches=0"]
    cfg = compose_config([*overrides, *probe_overrides(probe)], tmp_path / "run")
    out = train(cfg)
    check_identical_ranks_and_batches(read_probes(probe, 2), steps=3, global_batch=4)
    assert out["metrics"]["global_step"] == 3 and out["metrics"]["world_size"] == 2
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3


@pytest.mark.slow
def test_torchrun_two_nodes_num_nodes_flows_through(tmp_path):
    """Two 'nodes' of one rank each on this machine: trainer.num_nodes=2 reaches Lightning and the ranks."""
    run_dir, probe = tmp_path / "run", tmp_path / "probe"
    port = str(free_port())
    cmd = [
        "bash",
        "scripts/train_torchrun.sh",
        *DDP_TINY,
        "logger=csv",
        "trainer.limit_val_batches=0",
        *probe_overrides(probe),
        f"hydra.run.dir={run_dir}",
    ]
    nodes = [
        start(
            cmd,
            tmp_path / f"node{r}.txt",
            NNODES="2",
            NODE_RANK=str(r),
            NPROC_PER_NODE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        for r in (0, 1)
    ]
    for r, proc in enumerate(nodes):
        finish(proc, tmp_path / f"node{r}.txt", timeout=240)
        assert proc.returncode == 0, (tmp_path / f"node{r}.txt").read_text()[-4000:]
    probes = read_probes(probe, 2)
    check_identical_ranks_and_batches(probes, steps=3, global_batch=4)
    assert [(p["num_nodes"], p["node_rank"], p["cluster"]) for p in probes] == [
        (2, 0, "TorchElasticEnvironment"),
        (2, 1, "TorchElasticEnvironment"),
    ]
    logs = {f for f in tree(run_dir) if f.endswith(".log")}
    assert logs == {"train.log", "rank1.log"}  # rank 1's Hydra bookkeeping stays out of rank 0's files


FAKE_SRUN = """#!{python}
# Test-only stand-in for srun: start SLURM_NTASKS copies of the command (SLURM_PROCID/LOCALID set), forward
# signals to them like slurmstepd, and with --kill-on-bad-exit end all when one fails.
import os, signal, subprocess, sys, time
args = sys.argv[1:]
while args and args[0].startswith("--"):
    args.pop(0)
n = int(os.environ["SLURM_NTASKS"])
tasks = [subprocess.Popen(args, env=dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i), SLURM_NODEID="0"))
         for i in range(n)]
for sig in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, lambda s, f: [t.send_signal(s) for t in tasks if t.poll() is None])
while any(t.poll() is None for t in tasks):
    if any(t.returncode for t in tasks if t.returncode is not None):
        [t.kill() for t in tasks if t.poll() is None]
    time.sleep(0.1)
sys.exit(next((t.returncode for t in tasks if t.returncode), 0))
"""


@pytest.mark.slow
def test_slurm_time_limit_signal_saves_last_checkpoint_and_requeues(tmp_path):
    """scripts/train_slurm.sh under a fake srun/scontrol: SIGUSR1 -> last.ckpt + `scontrol requeue`, exit 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=PYTHON))
    (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path}/scontrol.txt\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    run_dir = tmp_path / "run"
    slurm = dict(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="rockgen-test",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NNODES="1",
        SLURM_NODELIST="127.0.0.1",
        SLURM_SUBMIT_DIR=str(ROOT),
        MASTER_PORT=str(free_port()),
    )
    cmd = [
        "bash",
        "scripts/train_slurm.sh",
        *DDP_TINY,
        *CSV,
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=1000",
        "callbacks.checkpoint.every_n_train_steps=1000",
        "trainer.val_check_interval=1000",
    ]
    log = tmp_path / "job1.txt"
    proc = start(cmd, log, **slurm)
    wait_for_steps(proc, run_dir, log, 2)
    proc.send_signal(signal.SIGUSR1)  # SLURM's --signal=USR1@180, delivered to every task by srun
    out = finish(proc, log, timeout=120)
    assert proc.returncode == 0, out[-4000:]
    assert "Received SIGUSR1: saved" in out and "Requeued SLURM job 4242" in out, out[-4000:]
    assert (tmp_path / "scontrol.txt").read_text().splitlines() == ["requeue 4242"]  # rank 0 only
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step >= 2
    assert {f for f in tree(run_dir) if f.endswith(".log")} == {"train.log", "rank1.log"}
    # the requeued job runs the same command: resume=auto continues from this last.ckpt (as after a kill -9,
    # see test_fault_tolerance)


# ---------------------------------------------------------------------------------------- configuration
def test_global_batch_must_divide_by_world_size():
    assert split_global_batch("batch_size", 8, 4) == 2
    with pytest.raises(ValueError, match=r"data.batch_size=6 .* world size 4 .* data.batch_size=4"):
        split_global_batch("batch_size", 6, 4)


def _cfg(tmp_path, *overrides: str):
    return compose_config([*TINY, *overrides], tmp_path)


def test_fp16_on_cpu_is_a_clear_error_not_a_silent_switch(tmp_path):
    with pytest.raises(ValueError, match="16-mixed .* needs a GPU.*bf16-mixed"):
        build_trainer(_cfg(tmp_path, "trainer.precision=16-mixed"), tmp_path)
    trainer = build_trainer(_cfg(tmp_path, "trainer.precision=bf16-mixed"), tmp_path)
    assert trainer.precision == "bf16-mixed"


def test_strategy_group_is_independent_of_the_trainer_group(tmp_path, monkeypatch):
    from pytorch_lightning.strategies import DDPStrategy

    for var in ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID"):  # this test itself may run inside a cluster job
        monkeypatch.delenv(var, raising=False)

    with pytest.raises(ValueError, match="strategy=single .* trainer.devices=2 .* strategy=ddp"):
        build_trainer(_cfg(tmp_path, "trainer.devices=2"), tmp_path)
    cfg = _cfg(tmp_path, "strategy=ddp_spawn", "trainer.devices=2", "strategy.timeout_s=60")
    trainer = build_trainer(cfg, tmp_path)
    strategy = trainer.strategy
    assert isinstance(strategy, DDPStrategy) and strategy._start_method == "spawn"
    assert strategy._timeout.total_seconds() == 60 and trainer.num_devices == 2
    assert type(strategy.checkpoint_io).__name__ == "SafeCheckpointIO"
    for group, message in (("slurm", "not a SLURM job step"), ("torchrun", "not started by torchrun")):
        with pytest.raises(ValueError, match=message):
            build_trainer(_cfg(tmp_path, f"strategy={group}", "trainer.devices=2"), tmp_path)
    assert OmegaConf.select(_cfg(tmp_path, "strategy=slurm"), "strategy.name") == "ddp"


def test_train_sh_prints_usage_without_a_device_count():
    proc = subprocess.run(["bash", "scripts/train.sh"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "Usage: scripts/train.sh N" in proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_launch_scripts_are_shellcheck_clean():
    scripts = [str(ROOT / "scripts" / name) for name in ("train.sh", "train_torchrun.sh", "train_slurm.sh")]
    proc = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
