"""Import shim: the presets live in ``rockgen.presets`` (``template=<name>`` on the command line)."""

from rockgen.presets import RESOLUTIONS, presets, register, run_stamp

__all__ = ["RESOLUTIONS", "presets", "register", "run_stamp"]
