"""Import shim: the DiffAE LightningModule lives in ``rockgen.lit.diffae``.

Kept so that ``from experiment import LitModel`` and checkpoints that record ``experiment:LitModel`` keep working.
"""

from rockgen.lit.diffae import LitModel

__all__ = ["LitModel"]
