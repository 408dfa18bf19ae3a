"""One writer per run directory: an advisory ``flock`` on ``<run_dir>/.rockgen.lock`` holding the owner's PID.

Two trainings started with the same ``run_name`` would otherwise interleave checkpoints, CSV rows and W&B runs
in one folder. The lock is released by the kernel when the process ends (also on ``kill -9``), so a stale
lock file never blocks a later run.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = ".rockgen.lock"
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "GROUP_RANK")


class RunDirLocked(RuntimeError):
    """Another process is writing into this run directory."""


def first_process() -> bool:
    """True for the process that owns a job's run directory: not a DDP rank > 0 (by the launchers' variables)."""
    return all(os.environ.get(k, "0") in ("", "0") for k in _RANK_VARS)


class RunDirLock:
    """``with RunDirLock(run_dir):`` fails at once, naming the other process, if another writer holds it."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode(errors="replace").strip() or "unknown PID"
            os.close(fd)
            raise RunDirLocked(
                f"run directory {self.path.parent} is in use by another rockgen process ({owner}); "
                "choose another run_name=... or wait for that run to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
