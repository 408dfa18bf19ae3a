"""Lightning callbacks of rockgen."""

from rockgen.callbacks.checkpoint import RockgenCheckpoint

__all__ = ["RockgenCheckpoint"]
