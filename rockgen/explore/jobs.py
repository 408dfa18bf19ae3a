"""One model, one job at a time: a lock, per-job cancellation and progress counted at the networks' forward calls.

The web app runs each action in a worker thread (gradio's queue). A UI library can cancel its own bookkeeping,
but it cannot stop a thread that is inside a sampler loop; so every network of the model gets a forward
pre-hook that, while a job runs, counts the call (progress = calls / expected calls) and raises
:class:`JobCancelled` once the job was cancelled: the sampler stops at its next step, not at its end.

    runner = JobRunner([model.ema_model.encoder, model.ema_model.decoder])
    images = runner.run("sample", total_calls=40, fn=lambda: model.sample(8, T=20), progress=print_fraction)
    runner.cancel()        # from any thread: the running job raises JobCancelled at its next network call
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

R = TypeVar("R")
ProgressFn = Callable[[float, str], None]


class JobCancelled(RuntimeError):
    """The running job was cancelled; raised inside its thread at the next network call."""


@dataclass
class _Job:
    id: int
    name: str
    total_calls: int
    progress: ProgressFn | None
    cancelled: threading.Event = field(default_factory=threading.Event)
    calls: int = 0


class JobRunner:
    """Runs one job at a time over a set of modules; later callers wait (FIFO by the lock) until it is done.

    ``history`` keeps one record per finished job: id, name, status (done | cancelled | failed), start and end
    (``time.monotonic``), network calls and seconds waited for the lock; the app exposes it so that tests (and
    users) can see that two requests ran one after the other.
    """

    def __init__(self, modules: Iterable[nn.Module], history_size: int = 200) -> None:
        self._lock = threading.Lock()
        self._job: _Job | None = None
        self._owner: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._history_size = history_size
        self.history: list[dict[str, Any]] = []
        self._handles = [m.register_forward_pre_hook(self._on_forward) for m in modules]

    def _on_forward(self, module: nn.Module, args: Any) -> None:
        job = self._job
        if job is None or threading.current_thread() is not self._owner:
            return  # a forward call outside a job (or from another thread) is neither counted nor stopped
        if job.cancelled.is_set():
            raise JobCancelled(f"{job.name} cancelled")
        job.calls += 1
        if job.progress is not None and job.total_calls > 0:
            job.progress(min(job.calls / job.total_calls, 0.99), f"{job.name}: network call {job.calls}")

    @property
    def busy(self) -> bool:
        return self._job is not None

    def run(self, name: str, total_calls: int, fn: Callable[[], R], progress: ProgressFn | None = None) -> R:
        """Run ``fn()`` as job ``name`` once no other job runs; ``total_calls``: expected network calls."""
        queued = time.monotonic()
        with self._lock:
            job = _Job(next(self._ids), name, int(total_calls), progress)
            self._owner = threading.current_thread()
            self._job = job
            start = time.monotonic()
            status = "failed"
            try:
                if progress is not None:
                    progress(0.0, f"{name}: started")
                result = fn()
                status = "done"
                if progress is not None:
                    progress(1.0, f"{name}: done")
                return result
            except JobCancelled:
                status = "cancelled"
                raise
            finally:
                self._job = None
                self.history.append(
                    {
                        "id": job.id,
                        "name": name,
                        "status": status,
                        "start": start,
                        "end": time.monotonic(),
                        "waited_s": start - queued,
                        "calls": job.calls,
                    }
                )
                del self.history[: -self._history_size]

    def cancel(self) -> str | None:
        """Cancel the running job (from any thread); returns its name, or None when nothing runs."""
        job = self._job
        if job is None:
            return None
        job.cancelled.set()
        return job.name

    def close(self) -> None:
        """Remove the hooks from the modules."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
