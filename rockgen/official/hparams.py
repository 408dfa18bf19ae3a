"""Official DiffAE ``TrainConfig`` hyper-parameters ⇄ rockgen ``LitModel`` hyper-parameters.

An official checkpoint's ``hyper_parameters`` is ``TrainConfig.as_dict_jsonable()`` (phizaz/diffae
``config.py``): every field as a plain value, **except enum fields, which it drops** (``train_mode``,
``model_name``, ``beatgans_model_mean_type``, ``net_latent_activation``, ``optimizer``, …). What those would say
is therefore taken from the only values the official templates use (ε-prediction, SiLU latent MLP, no last
activation) and written into the import report as assumptions; whether there is a latent net is read from the
state dict instead.

Each field the networks depend on is either mapped (``net_ch`` → ``unet.model_channels`` …) or checked to have
the one value rockgen implements (``net_enc_pool='adaptivenonzero'``, ``net_beatgans_resnet_two_cond=True`` …);
anything else is an ``OfficialImportError`` naming the field.
"""

from __future__ import annotations

from typing import Any

from rockgen.models.nn import as_tuple


class OfficialImportError(ValueError):
    """An official checkpoint rockgen cannot import faithfully (the message names the key or setting)."""


# Fields without which the networks cannot be rebuilt (present in every TrainConfig.as_dict_jsonable()).
REQUIRED = (
    "img_size",
    "net_ch",
    "net_ch_mult",
    "net_attn",
    "net_num_res_blocks",
    "net_enc_num_res_blocks",
    "style_ch",
    "net_beatgans_embed_channels",
    "net_beatgans_attn_head",
    "net_resblock_updown",
    "net_beatgans_resnet_two_cond",
    "dropout",
    "T",
    "T_eval",
    "beta_scheduler",
)
LATENT_REQUIRED = (
    "net_latent_layers",
    "net_latent_num_hid_channels",
    "net_latent_skip_layers",
    "net_latent_time_emb_channels",
    "net_latent_use_norm",
    "net_latent_condition_bias",
    "latent_beta_scheduler",
    "latent_T_eval",
)
# Settings rockgen implements with one value only: field -> (allowed values, why). Absent = official default.
CHECKED: dict[str, tuple[tuple[Any, ...], str]] = {
    "net_beatgans_resnet_two_cond": ((True,), "the DiffAE decoder conditions every ResBlock on z_sem"),
    "net_enc_pool": (("adaptivenonzero",), "the semantic encoder ends in global average pooling"),
    "net_enc_use_time": ((False, None), "the semantic encoder has no time input"),
    "net_autoenc_stochastic": ((False, None), "z_sem is deterministic"),
    "net_num_input_res_blocks": ((None,), "down and up paths share net_num_res_blocks"),
    "net_latent_num_time_layers": ((2, None), "the latent MLP's time embedding is Linear-SiLU-Linear"),
    "net_latent_time_last_act": ((False, None), "no activation after the latent time embedding"),
    "net_enc_num_cls": ((None,), "classifier checkpoints are not DiffAE autoencoders"),
}
# What as_dict_jsonable dropped (enums) and rockgen therefore assumes: the official templates' only values.
ASSUMED = {
    "beatgans_model_mean_type": "eps (the decoder predicts ε)",
    "latent_model_mean_type": "eps (the latent net predicts ε)",
    "net_latent_activation": "silu",
    "net_latent_net_last_act": "none",
    "net_beatgans_resnet_scale_at": "afternorm (AdaGN after GroupNorm)",
}
# Official field -> rockgen setting, for the report (what maps to what).
MAPPING = {
    "img_size": "unet.image_size, encoder.image_size",
    "net_ch": "unet.model_channels, encoder.model_channels",
    "net_ch_mult": "unet.channel_mult",
    "net_enc_channel_mult": "encoder.channel_mult (null: net_ch_mult)",
    "net_attn": "unet.attention_resolutions",
    "net_enc_attn": "encoder.attention_resolutions (null: net_attn)",
    "net_num_res_blocks": "unet.num_res_blocks",
    "net_enc_num_res_blocks": "encoder.num_res_blocks",
    "style_ch": "encoder.out_channels (z_sem width)",
    "net_beatgans_embed_channels": "unet.embed_channels",
    "net_beatgans_resnet_cond_channels": "unet.cond_channels (null: net_beatgans_embed_channels)",
    "net_beatgans_attn_head": "unet.num_heads, encoder.num_heads",
    "net_resblock_updown": "unet.resblock_updown, encoder.resblock_updown",
    "dropout": "unet.dropout (the official encoder blocks have no dropout layer)",
    "net_beatgans_gradient_checkpoint": "unet.gradient_checkpointing",
    "net_enc_grad_checkpoint": "encoder.gradient_checkpointing",
    "T": "diffusion.num_timesteps",
    "beta_scheduler": "diffusion.schedule (+ beta_const)",
    "T_eval": "evaluation.render_T (default DDIM steps of render/encode_stochastic)",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "warmup": "optim.warmup_steps",
    "ema_decay": "ema.decay",
    "net_latent_*": "latent.net (LatentMLPConfig)",
    "latent_beta_scheduler": "latent.diffusion.schedule",
    "latent_T_eval": "latent.T_latent",
    "latent_clip_sample": "latent.diffusion.clip_x0",
    "conds_mean / conds_std (state dict)": "latent_mean / latent_std buffers",
}


def _get(hp: dict[str, Any], key: str, default: Any = None) -> Any:
    return hp[key] if key in hp else default


def _schedule(name: str, T: int, field: str) -> dict[str, Any]:
    """Official ``get_named_beta_schedule`` name → rockgen DiffusionConf fields."""
    if name in ("linear", "cosine"):
        if name == "linear" and T != 1000:
            # official linear betas are scaled by 1000/T; rockgen's linear schedule is 1e-4..0.02 for any T
            raise OfficialImportError(f"{field}='linear' with T={T}: only T=1000 imports (rockgen does not rescale)")
        return {"schedule": name, "num_timesteps": T}
    if isinstance(name, str) and name.startswith("const"):
        try:
            value = float(name[len("const") :])
        except ValueError:
            raise OfficialImportError(f"{field}={name!r} is not an official beta schedule") from None
        return {"schedule": "const", "num_timesteps": T, "beta_const": value * 1000 / T}
    raise OfficialImportError(f"{field}={name!r}: rockgen imports linear, cosine and const<β> schedules")


def _attention(values: Any, image_size: int, levels: int) -> list[int]:
    """Official attention resolutions, keeping only reachable ones (the official code ignores the rest)."""
    reachable = {image_size // 2**i for i in range(levels)}
    return [r for r in as_tuple(values or ()) if r in reachable]


def rockgen_hparams(hp: dict[str, Any], has_latent: bool) -> dict[str, Any]:
    """The ``LitModel`` hyper-parameters equivalent to official ``TrainConfig`` dict ``hp``.

    ``has_latent``: the state dict holds a latent net (``model.latent_net.*``), so ``net_latent_*`` describe it.
    """
    missing = [k for k in REQUIRED + (LATENT_REQUIRED if has_latent else ()) if k not in hp]
    if missing:
        raise OfficialImportError(f"hyper_parameters lack {missing}: not an official DiffAE TrainConfig dict")
    for key, (allowed, why) in CHECKED.items():
        if key in hp and hp[key] not in allowed:
            raise OfficialImportError(
                f"hyper_parameters {key}={hp[key]!r} is not supported (rockgen needs {allowed[0]!r}: {why})"
            )
    T = int(hp["T"])
    for key in ("beatgans_rescale_timesteps", "latent_rescale_timesteps"):
        if _get(hp, key) and T != 1000:
            raise OfficialImportError(f"hyper_parameters {key}=True with T={T} is not supported")
    size, ch = int(hp["img_size"]), int(hp["net_ch"])
    dec_mult = list(as_tuple(hp["net_ch_mult"]))
    enc_mult = list(as_tuple(_get(hp, "net_enc_channel_mult") or dec_mult))
    heads, updown = int(hp["net_beatgans_attn_head"]), bool(hp["net_resblock_updown"])
    embed = int(hp["net_beatgans_embed_channels"])
    style = int(hp["style_ch"])
    # official ResBlockConfig: cond_emb_channels = resnet_cond_channels or emb_channels
    cond = int(_get(hp, "net_beatgans_resnet_cond_channels") or embed)
    if cond != style:
        raise OfficialImportError(
            f"hyper_parameters style_ch={style} differs from the decoder's z_sem width {cond} "
            "(net_beatgans_resnet_cond_channels or net_beatgans_embed_channels): the official net cannot run either"
        )
    unet = {
        "image_size": size,
        "in_channels": 3,
        "out_channels": 3,
        "model_channels": ch,
        "channel_mult": dec_mult,
        "num_res_blocks": int(hp["net_num_res_blocks"]),
        "attention_resolutions": _attention(hp["net_attn"], size, len(dec_mult)),
        "dropout": float(hp["dropout"]),
        "embed_channels": embed,
        "cond_channels": cond,
        "num_heads": heads,
        "resblock_updown": updown,
        "gradient_checkpointing": bool(_get(hp, "net_beatgans_gradient_checkpoint", False)),
    }
    encoder = {
        "image_size": size,
        "in_channels": 3,
        "model_channels": ch,
        "channel_mult": enc_mult,
        "num_res_blocks": int(hp["net_enc_num_res_blocks"]),
        "attention_resolutions": _attention(_get(hp, "net_enc_attn") or hp["net_attn"], size, len(enc_mult)),
        "out_channels": style,
        "dropout": 0.0,
        "num_heads": heads,
        "resblock_updown": updown,
        "gradient_checkpointing": bool(
            _get(hp, "net_beatgans_gradient_checkpoint", False) or _get(hp, "net_enc_grad_checkpoint", False)
        ),
    }
    diffusion = {**_schedule(hp["beta_scheduler"], T, "beta_scheduler"), "prediction": "eps", "clip_x0": True}
    wd = float(_get(hp, "weight_decay", 0.0) or 0.0)
    # the optimizer enum is dropped; the templates pair AdamW with weight decay, Adam (= AdamW at 0) without
    optim = {"name": "adamw", "lr": float(_get(hp, "lr", 1e-4)), "weight_decay": wd}
    optim["warmup_steps"] = int(_get(hp, "warmup", 0) or 0)
    out: dict[str, Any] = {
        "unet": unet,
        "encoder": encoder,
        "diffusion": diffusion,
        "optim": optim,
        "ema": {"decay": float(_get(hp, "ema_decay", 0.9999))},
        "evaluation": {"render_T": int(hp["T_eval"])},
        "latent": None,
        "stage": "autoenc",
    }
    if has_latent:
        out["latent"] = _latent(hp, style, T, optim)
        out["stage"] = "latent"
    return out


def _latent(hp: dict[str, Any], style: int, T: int, optim: dict[str, Any]) -> dict[str, Any]:
    if float(hp["net_latent_condition_bias"]) != 1.0:
        raise OfficialImportError(
            f"hyper_parameters net_latent_condition_bias={hp['net_latent_condition_bias']} is not supported "
            "(rockgen's latent MLP scales by 1 + Linear(t_emb), the official templates' value 1)"
        )
    layers = int(hp["net_latent_layers"])
    skips = sorted(int(i) for i in (hp["net_latent_skip_layers"] or ()))
    net = {
        "hidden_channels": int(hp["net_latent_num_hid_channels"]),
        "num_layers": layers,
        "time_channels": int(hp["net_latent_time_emb_channels"]),
        "time_embed_channels": style,  # official: the time MLP maps to num_channels (= style_ch)
        "skip_layers": None if skips == list(range(1, layers)) else skips,
        "use_norm": bool(hp["net_latent_use_norm"]),
        "dropout": float(_get(hp, "net_latent_dropout", 0.0) or 0.0),
    }
    diffusion = {
        **_schedule(hp["latent_beta_scheduler"], T, "latent_beta_scheduler"),
        "prediction": "eps",
        "loss": "l1",  # latent_loss_type is an enum (dropped); l1 = the FFHQ latent templates
        "clip_x0": bool(_get(hp, "latent_clip_sample", False)),
    }
    return {
        "net": net,
        "diffusion": diffusion,
        "optim": dict(optim),
        "ema": {"decay": float(_get(hp, "ema_decay", 0.9999))},
        "T_latent": int(hp["latent_T_eval"]),
    }


def official_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The inverse: official ``TrainConfig`` fields (as ``as_dict_jsonable`` writes them) of rockgen ``hparams``.

    Holds every field ``rockgen_hparams`` reads, with the official names and value types (tuples).
    """
    unet, enc, diff = hparams["unet"], hparams["encoder"], hparams.get("diffusion") or {}
    optim, ema, ev = hparams.get("optim") or {}, hparams.get("ema") or {}, hparams.get("evaluation") or {}
    if diff.get("prediction", "eps") != "eps":
        raise OfficialImportError(
            f"the official DiffAE code saves only ε-prediction models; this one predicts {diff['prediction']!r}"
        )
    if enc.get("z_norm", "none") != "none":
        raise OfficialImportError(
            "the official DiffAE encoder has no z_sem normalisation; "
            f"this one has model.encoder.z_norm={enc['z_norm']!r}"
        )
    if enc.get("head", "pool") != "pool" or unet.get("spatial_cond", 0):
        raise OfficialImportError(
            "the official DiffAE networks have no spatial z_sem path; this one has "
            f"model.encoder.head={enc.get('head', 'pool')!r}, model.unet.spatial_cond={unet.get('spatial_cond', 0)}"
        )
    T = int(diff.get("num_timesteps", 1000))
    hp: dict[str, Any] = {
        "img_size": unet["image_size"],
        "net_ch": unet["model_channels"],
        "net_ch_mult": tuple(unet["channel_mult"]),
        "net_enc_channel_mult": tuple(enc["channel_mult"]),
        "net_attn": tuple(unet["attention_resolutions"]),
        "net_enc_attn": tuple(enc["attention_resolutions"]),
        "net_num_res_blocks": unet["num_res_blocks"],
        "net_num_input_res_blocks": None,
        "net_enc_num_res_blocks": enc["num_res_blocks"],
        "style_ch": enc["out_channels"],
        "net_beatgans_embed_channels": unet["embed_channels"],
        "net_beatgans_resnet_cond_channels": None
        if unet["cond_channels"] == unet["embed_channels"]
        else unet["cond_channels"],
        "net_beatgans_attn_head": unet.get("num_heads", 1),
        "net_resblock_updown": unet.get("resblock_updown", True),
        "net_beatgans_resnet_two_cond": True,
        "net_enc_pool": "adaptivenonzero",
        "net_enc_use_time": False,
        "net_autoenc_stochastic": False,
        "net_beatgans_gradient_checkpoint": bool(unet.get("gradient_checkpointing", False)),
        "net_enc_grad_checkpoint": bool(enc.get("gradient_checkpointing", False)),
        "dropout": unet.get("dropout", 0.1),
        "T": T,
        "T_eval": int(ev.get("render_T", 20)),
        "beta_scheduler": _official_schedule(diff, T),
        "lr": optim.get("lr", 1e-4),
        "weight_decay": optim.get("weight_decay", 0.0),
        "warmup": optim.get("warmup_steps", 0),
        "ema_decay": ema.get("decay", 0.9999),
        "beatgans_rescale_timesteps": False,
        "latent_znormalize": False,
        "net_latent_layers": None,
    }
    lat = hparams.get("latent")
    if lat:
        net = lat.get("net") or {}
        style = enc["out_channels"]
        if int(net.get("time_embed_channels", 512)) != style or net.get("num_classes") or net.get("zoom_embed"):
            raise OfficialImportError(
                "the official latent MLP has time_embed_channels = num_channels (z_sem width "
                f"{style}) and no class or zoom input; this one has {net}"
            )
        layers = int(net.get("num_layers", 10))
        skips = net.get("skip_layers")
        ldiff = lat.get("diffusion") or {}
        hp.update(
            net_latent_layers=layers,
            net_latent_num_hid_channels=net.get("hidden_channels", 2048),
            net_latent_skip_layers=list(range(1, layers)) if skips is None else list(skips),
            net_latent_time_emb_channels=net.get("time_channels", 64),
            net_latent_use_norm=net.get("use_norm", True),
            net_latent_condition_bias=1,
            net_latent_dropout=net.get("dropout", 0.0),
            net_latent_num_time_layers=2,
            net_latent_time_last_act=False,
            latent_beta_scheduler=_official_schedule({"schedule": "const", "beta_const": 0.008, **ldiff}, T),
            latent_T_eval=int(lat.get("T_latent", 20)),
            latent_clip_sample=bool(ldiff.get("clip_x0", False)),
            latent_znormalize=True,
            latent_rescale_timesteps=False,
        )
    return hp


def _official_schedule(diff: dict[str, Any], T: int) -> str:
    kind = diff.get("schedule", "linear")
    if kind == "const":
        return f"const{float(diff.get('beta_const', 0.008)) * T / 1000:g}"
    return kind
