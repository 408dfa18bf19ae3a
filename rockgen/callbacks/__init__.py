"""Lightning callbacks of rockgen."""

from rockgen.callbacks.checkpoint import RockgenCheckpoint
from rockgen.callbacks.preemption import Preemption
from rockgen.callbacks.step_seed import StepSeed

__all__ = ["Preemption", "RockgenCheckpoint", "StepSeed"]
