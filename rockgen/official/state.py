"""Official DiffAE ``LitModel`` state dict ⇄ rockgen ``LitModel`` state dict, key by key.

Official (phizaz/diffae ``experiment.py``) → rockgen, for ``P`` in ``model`` and ``ema_model``:

    P.time_embed.time_embed.{0,2}.*           → P.decoder.time_embed.{0,2}.*
    P.{input_blocks,middle_block,output_blocks,out}.*  → P.decoder.<same>
    P.encoder.*                               → P.encoder.*
    P.latent_net.layers.<i>.linear_emb.*      → (dropped: the same tensor as ...cond_layers.1.*, checked equal)
    P.latent_net.*                            → P.latent_net.*
    conds_mean, conds_std  (1, D)             → latent_mean, latent_std (D,)
    x_T  (sample_size, 3, H, W)               → kept in the import record (the official fixed preview noise)

Nothing else exists in an official checkpoint; any other key is an error, as is any rockgen key left unfilled.
"""

from __future__ import annotations

import re

import torch

from rockgen.official.hparams import OfficialImportError

PREFIXES = ("model", "ema_model")
_DECODER = ("input_blocks.", "middle_block.", "output_blocks.", "out.")
_TIME = "time_embed.time_embed."
_ALIAS = re.compile(r"^latent_net\.layers\.(\d+)\.linear_emb\.(weight|bias)$")
LATENT_BUFFERS = ("latent_mean", "latent_std", "latent_ready")


def _rename(rest: str) -> str | None:
    """Official key inside a ``BeatGANsAutoencModel`` → rockgen key inside ``DiffAE`` (None: unknown)."""
    if rest.startswith(("encoder.", "latent_net.")):
        return rest
    if rest.startswith(_TIME):
        return "decoder.time_embed." + rest[len(_TIME) :]
    if rest.startswith(_DECODER):
        return "decoder." + rest
    return None


def has_latent_net(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(f"{p}.latent_net.") for k in state for p in PREFIXES)


def to_rockgen(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rename an official state dict: (rockgen state without latent buffers, extras {x_T, conds_mean, conds_std}).

    Raises OfficialImportError listing every key it does not know.
    """
    out: dict[str, torch.Tensor] = {}
    extras: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    aliases: list[tuple[str, str]] = []
    for key, value in state.items():
        if key in ("x_T", "conds_mean", "conds_std"):
            extras[key] = value
            continue
        prefix, _, rest = key.partition(".")
        new = _rename(rest) if prefix in PREFIXES else None
        if new is None:
            unknown.append(key)
        elif _ALIAS.match(rest):
            aliases.append((key, f"{prefix}.{rest.replace('.linear_emb.', '.cond_layers.1.')}"))
        else:
            out[f"{prefix}.{new}"] = value
    if unknown:
        raise OfficialImportError(f"{len(unknown)} unknown key(s) in the official state_dict: {sorted(unknown)}")
    for alias, target in aliases:
        # official MLPLNAct registers linear_emb twice (also as cond_layers[1]); both keys hold the same tensor
        if target not in state:
            raise OfficialImportError(f"official state_dict has {alias} but not its twin {target}")
        if not torch.equal(state[alias], state[target]):
            raise OfficialImportError(f"official state_dict {alias} differs from {target} (they must be one tensor)")
    return out, extras


def check_against(mapped: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every expected rockgen key filled, nothing extra, every shape equal; errors list all offenders."""
    want = {k for k in expected if k not in LATENT_BUFFERS}
    missing = sorted(want - set(mapped))
    extra = sorted(set(mapped) - want)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s) (rockgen names; official names in to_official): {missing}")
    if extra:
        problems.append(f"{len(extra)} key(s) the architecture from hyper_parameters does not have: {extra}")
    shapes = [
        f"{k}: official {tuple(mapped[k].shape)} vs rockgen {tuple(expected[k].shape)}"
        for k in sorted(set(mapped) & want)
        if tuple(mapped[k].shape) != tuple(expected[k].shape)
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): " + "; ".join(shapes))
    if problems:
        raise OfficialImportError("official checkpoint does not fit its hyper_parameters: " + " | ".join(problems))


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse: a rockgen ``LitModel`` state dict in the official layout (latent buffers → conds_mean/std)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in ("latent_mean", "latent_std"):
            out["conds_" + key.removeprefix("latent_")] = value.detach().clone()[None, :]
            continue
        if key == "latent_ready":
            continue
        prefix, _, rest = key.partition(".")
        if prefix not in PREFIXES:
            raise OfficialImportError(f"rockgen key {key} has no official counterpart")
        if rest.startswith("decoder.time_embed."):
            name = _TIME + rest[len("decoder.time_embed.") :]
        elif rest.startswith("decoder."):
            name = rest[len("decoder.") :]
        elif rest.startswith(("encoder.", "latent_net.")):
            name = rest
        else:
            raise OfficialImportError(f"rockgen key {key} has no official counterpart")
        out[f"{prefix}.{name}"] = value
        match = re.match(r"^latent_net\.layers\.(\d+)\.cond_layers\.1\.(weight|bias)$", name)
        if match:
            out[f"{prefix}.latent_net.layers.{match[1]}.linear_emb.{match[2]}"] = value
    return out
