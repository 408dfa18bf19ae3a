"""Importing checkpoints of the official DiffAE code (phizaz/diffae) into rockgen: same networks, same outputs.

``import_official(path, out=...)`` reads the Lightning 1.4 ``.ckpt``, rebuilds the architecture from its
``hyper_parameters`` (``rockgen.official.hparams``), renames every state-dict key (``rockgen.official.state``)
and returns a rockgen ``LitModel``; ``python run.py task=import_official official_ckpt=PATH`` does the same
from the command line. ``to_official`` / ``official_hparams`` are the inverse mapping.
"""

from rockgen.official.hparams import OfficialImportError, official_hparams, rockgen_hparams
from rockgen.official.importer import import_official, read_official, save_imported
from rockgen.official.state import to_official, to_rockgen

__all__ = [
    "OfficialImportError",
    "import_official",
    "official_hparams",
    "read_official",
    "rockgen_hparams",
    "save_imported",
    "to_official",
    "to_rockgen",
]
