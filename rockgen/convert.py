"""Converting checkpoints from other code into rockgen's: ``import_official`` (phizaz/diffae checkpoints).

from rockgen.convert import import_official
model = import_official("checkpoints/ffhq128_autoenc_latent/last.ckpt", out="rock.ckpt")
"""

from rockgen.official import OfficialImportError, import_official

__all__ = ["OfficialImportError", "import_official"]
