"""Stage-2 set-up: put a trained autoencoder into a DiffAE latent-DDIM method and check its latents file."""

from __future__ import annotations

from rockgen.conditioning import class_index_of_codes, code_labels_strict, resolve_classes
from rockgen.config import parse, to_plain
from rockgen.latents import encoder_fingerprint, load_latents
from rockgen.lit.checkpoint import CheckpointError, read_checkpoint
from rockgen.models import EncoderConfig, UNetConfig

_AUTOENC_PREFIXES = ("model.encoder.", "model.decoder.", "ema_model.encoder.", "ema_model.decoder.")


def load_autoencoder_and_latents(method) -> None:
    """Load encoder/decoder (+ EMA) from ``model.latent.autoenc_ckpt`` and the z statistics of ``latents_path``.

    Errors name the setting: a missing file, a checkpoint of another architecture, a latents file of another
    width or made by another autoencoder.
    """
    conf = method.latent_conf
    if not conf.autoenc_ckpt:
        raise ValueError("model.latent.autoenc_ckpt is not set: point it at the trained autoencoder checkpoint")
    if not conf.latents_path:
        raise ValueError("model.latent.latents_path is not set: run task=infer_latents on the autoencoder first")
    try:
        ckpt = read_checkpoint(conf.autoenc_ckpt)  # trusted_checkpoint: the process-wide setting
    except CheckpointError as err:
        raise CheckpointError(f"model.latent.autoenc_ckpt: {err}") from None
    hp = ckpt.get("hyper_parameters", {})
    for key, cls in (("unet", UNetConfig), ("encoder", EncoderConfig)):
        theirs, ours = hp.get(key), method.hparams[key]
        if theirs is not None and _arch(cls, theirs) != _arch(cls, ours):
            raise ValueError(
                f"model.latent.autoenc_ckpt={conf.autoenc_ckpt} was trained with another "
                f"model.{key} ({theirs}) than this latent preset's ({ours}): use the latent "
                "template of the same resolution (e.g. demo_latent for demo)"
            )
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(_AUTOENC_PREFIXES)}
    if not state:
        raise ValueError(f"{conf.autoenc_ckpt} holds no DiffAE encoder/decoder weights (not an autoencoder checkpoint)")
    result = method.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k.startswith(_AUTOENC_PREFIXES)]
    if missing:
        raise ValueError(f"{conf.autoenc_ckpt} lacks autoencoder weights, e.g. {missing[:3]}")
    lat = load_latents(
        conf.latents_path,
        expect_dim=method.latent_mean.shape[0],
        expect_fingerprint=encoder_fingerprint(method.ema_model.encoder),
    )
    method.latent_mean.copy_(lat.mean)
    method.latent_std.copy_(lat.std)
    method.latent_ready.fill_(True)
    method.code_class = None
    if conf.classes:
        # class index of every row of the latents file (null = unlabelled); batches carry their row indices
        labels = code_labels_strict(lat.paths, lat.labels, conf.labels_csv)
        resolve_classes(labels, list(conf.classes), "model.latent.classes")  # each class still has codes
        method.code_class = class_index_of_codes(labels, conf.classes, f"model.latent.latents_path={conf.latents_path}")


def _arch(cls, value: dict) -> dict:
    """A network config with the dataclass defaults filled in (a checkpoint written before a field was added
    still matches) and the settings that do not change the weights left out."""
    return {**to_plain(parse(cls, value, f"the autoencoder's {cls.__name__}")), "gradient_checkpointing": None}
