"""DiffAE (Preechakul et al., CVPR 2022): semantic encoder + conditional UNet decoder (+ latent DDIM), EMA copy.

Public API as in the official DiffAE (images in [-1, 1] in, [0, 1] out), on the ``LitModel`` that drives it::

    model = LitModel.load_from_checkpoint("logs/train/demo/checkpoints/last.ckpt", map_location="cpu")
    z_sem = model.encode(x)                          # (B, 3, H, W) in [-1, 1] → (B, 512)
    x_T = model.encode_stochastic(x, z_sem, T=50)    # DDIM inversion → (B, 3, H, W)
    rec = model.render(x_T, z_sem, T=50)             # DDIM decoding → (B, 3, H, W) in [0, 1]
    new = model.sample(16, "cpu", T=20, T_latent=20) # latent DDIM → decoder (latent-stage checkpoints)

The two training methods (``rockgen.methods.diffae_stages``) share these networks and this API:
``DiffAEAutoencoder`` (stage ``autoenc``, DiffAE §3.1) trains encoder and decoder; ``DiffAELatentDDIM``
(stage ``latent``, §3.3) freezes them and trains the latent DDIM over z-normalised z_sem; its checkpoint holds
the autoencoder, the latent net and the latent statistics: everything ``sample`` needs.
"""

from __future__ import annotations

from typing import Any

import torch

from rockgen.callbacks.preemption import check_preempted
from rockgen.conditioning import check_condition, latent_class_list, requested_classes
from rockgen.config import DiffusionConf, EvalConf, LatentConf, parse, to_plain
from rockgen.diffusion import Schedule
from rockgen.lit.common import check_images
from rockgen.methods.base import Device, Method, SampleRequest, Section, plain_sections, to_unit
from rockgen.methods.protocol import GenerationMode, ReconstructionCode
from rockgen.models import DiffAE, EncoderConfig, LatentMLPConfig, UNetConfig
from rockgen.models.inference import inference_fn
from rockgen.samplers import ddim_invert, get_sampler, guided_model_fn, solver_options
from rockgen.seamless import seamless_padding


def _schedule(conf: DiffusionConf) -> Schedule:
    return Schedule.from_config(conf.schedule, conf.num_timesteps, const=conf.beta_const)


class DiffAEMethod(Method):
    """The DiffAE networks and their API; a stage subclass adds what it trains. Hyper-parameters: plain dicts."""

    method_key, method_label = "diffae", "DiffAE"
    stage_name: str  # "autoenc" | "latent": the ``model.stage`` value

    def __init__(
        self, unet: dict, encoder: dict,  # the decoder's and the encoder's configs (UNetConfig, EncoderConfig)
        diffusion: Section = None, optim: Section = None, ema: Section = None, evaluation: Section = None,
        lpips_weight: float = 0.0, channels_last: bool = True, latent: Section = None, stage: str = "autoenc",
    ) -> None:  # fmt: skip
        super().__init__()
        if stage != self.stage_name:
            raise ValueError(f"{type(self).__name__} is stage {self.stage_name!r}, got model.stage={stage!r}")
        hp = dict(
            unet=to_plain(unet),
            encoder=to_plain(encoder),
            **plain_sections(diffusion=diffusion, optim=optim, ema=ema, evaluation=evaluation),
            lpips_weight=float(lpips_weight),
            channels_last=bool(channels_last),
            latent=to_plain(latent),
            stage=stage,
        )
        if hp["latent"] is not None and hp["latent"].get("classes") is not None:
            # fixed at build time and saved, so a checkpoint always maps class indices to the same names
            hp["latent"]["classes"] = latent_class_list(hp["latent"])
        self.hparams = hp
        unet_cfg = parse(UNetConfig, hp["unet"], "model.unet")
        enc_cfg = parse(EncoderConfig, hp["encoder"], "model.encoder")
        self.diffusion_conf = parse(DiffusionConf, hp["diffusion"], "model.diffusion")
        self._training_settings(hp)
        self.eval_conf = parse(EvalConf, hp["evaluation"], "model.evaluation")
        self.latent_conf = parse(LatentConf, hp["latent"], "model.latent") if latent is not None else None
        self.schedule = _schedule(self.diffusion_conf)
        self.image_size = unet_cfg.image_size
        lat_cfg = None
        if self.latent_conf is not None:
            n_cls = len(self.latent_conf.classes or [])
            lat_net = {"num_channels": enc_cfg.out_channels, "num_classes": n_cls, **self.latent_conf.net}
            lat_cfg = LatentMLPConfig(**lat_net)
            self.latent_schedule = _schedule(self.latent_conf.diffusion)
            self.register_buffer("latent_mean", torch.zeros(enc_cfg.out_channels))
            self.register_buffer("latent_std", torch.ones(enc_cfg.out_channels))
            self.register_buffer("latent_ready", torch.zeros((), dtype=torch.bool))
        self._set_networks(DiffAE(enc_cfg, unet_cfg, lat_cfg), channels_last=channels_last)
        self._lpips: torch.nn.Module | None = None  # built in setup(); kept out of the state dict

    # ---------------------------------------------------------------- public API (official DiffAE names)
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic code z_sem (B, D) of images x (B, 3, H, W) in [-1, 1], by the EMA encoder."""
        check_images(x, self.image_size, "encode(x)")
        return self.ema_model.encoder(x.to(self.device, memory_format=self.memory_format)).float()

    @torch.no_grad()
    def encode_stochastic(
        self, x: torch.Tensor, cond: torch.Tensor, T: int | None = None, progress: bool = False
    ) -> torch.Tensor:
        """DDIM-invert images x (B, 3, H, W) in [-1, 1] given z_sem ``cond`` → x_T (B, 3, H, W)."""
        check_images(x, self.image_size, "encode_stochastic(x)")
        x = x.to(self.device, memory_format=self.memory_format)
        return ddim_invert(
            self.decoder_fn(cond), x, self.schedule, T or self.eval_conf.render_T, **self._solver_kw(progress)
        )

    def _solver_kw(self, progress: bool) -> dict:
        """What every image sampler of this model takes besides (model_fn, x, schedule, T)."""
        return dict(clip_x0=self.diffusion_conf.clip_x0, prediction=self.diffusion_conf.prediction, progress=progress)

    def render(
        self,
        noise: torch.Tensor,
        cond: torch.Tensor | None = None,
        T: int | None = None,
        progress: bool = False,
        sampler: str = "ddim",
        seamless: bool = False,
        grad: bool = False,
        spacing: str | None = None,
    ) -> torch.Tensor:
        """Decode x_T ``noise`` (B, 3, H, W) with z_sem ``cond`` (B, D) → images in [0, 1].

        ``sampler``: ddim | dpmpp_2m | dpmpp_3m | unipc (``rockgen.samplers``), T steps; ``spacing``: the
        multistep solvers' step rule (default quadratic; ``rockgen.samplers.spacing``). ``seamless``: periodic tiles
        (circular padding in the decoder, ``rockgen.seamless``). With ``cond=None`` z_sem is drawn from the
        latent DDIM (needs a latent-stage checkpoint). ``grad=True`` (DDIM): differentiable with respect to
        ``noise`` and ``cond`` (the graph through all T decoder calls is kept: memory grows with T); the weights
        stay frozen.
        """
        if grad and sampler != "ddim":
            raise ValueError(f"render(grad=True) needs sampler='ddim' (got {sampler!r})")
        solver = solver_options(sampler, spacing)  # a bad name fails before any work
        if cond is None:
            cond = self.sample_latents(noise.shape[0], noise.device, sampler=sampler)
        x = noise.to(self.device, memory_format=self.memory_format)
        grad_mode = torch.enable_grad() if grad else torch.no_grad()
        with grad_mode, seamless_padding(self.ema_model.decoder, enabled=seamless):
            solve = get_sampler(sampler)
            kw = self._solver_kw(progress) | solver | ({"grad": True} if grad else {})
            x0 = solve(self.decoder_fn(cond), x, self.schedule, T or self.eval_conf.render_T, **kw)
        return to_unit(x0)

    def draw(
        self,
        req: SampleRequest,
        cls=None,
        guidance: float | None = None,
        sampler: str = "ddim",
        sampler_latent: str | None = None,
        seamless: bool = False,
        progress: bool = False,
        noise: torch.Tensor | None = None,
        latent_noise: torch.Tensor | None = None,
        spacing: str | None = None,
    ) -> torch.Tensor:
        """``sample``: latent DDIM → de-normalise → image DDIM; images (N, 3, S, S) in [0, 1].

        Reproducible with ``seed`` (or pass the x_T ``noise`` and latent ``latent_noise`` yourself). A
        class-conditional checkpoint takes ``cls`` (a name, index, or one per sample) and classifier-free
        ``guidance`` w (0 unconditional, 1 conditional (default with cls), > 1 guided).
        ``sampler`` (ddim | dpmpp_2m | dpmpp_3m | unipc) solves both stages unless ``sampler_latent`` names
        another; ``spacing`` picks the image solver's steps; ``seamless`` makes each tile periodic.
        """
        self.check_condition(cls, guidance)
        solver_options(sampler, spacing)  # before the latent stage runs
        n, gen = req.n, req.generator
        cond = self.sample_latents(
            n, req.device, req.T_latent, generator=gen, noise=latent_noise, cls=cls, guidance=guidance,
            sampler=sampler_latent or sampler,
        )  # fmt: skip
        if noise is None:
            noise = torch.randn(n, 3, self.image_size, self.image_size, generator=gen, device=req.device)
        return self.render(noise, cond, req.T, progress=progress, sampler=sampler, seamless=seamless, spacing=spacing)

    # ---------------------------------------------------------------- generation protocol (rockgen.methods.protocol)
    def generation_modes(self, T: int = 20, T_latent: int = 20) -> list[GenerationMode]:
        """Latent DDIM-T_latent → render DDIM-T; without a trained latent stage, render with random z_sem."""
        if self.sample_unavailable() is None:

            def sample(n: int, seed: int, warm: bool) -> torch.Tensor:
                return self.sample(n, self.device, T=2 if warm else T, T_latent=2 if warm else T_latent, seed=seed)

            return [GenerationMode(f"T={T}", f"latent DDIM-{T_latent} + render DDIM-{T}", sample)]

        def render(n: int, seed: int, warm: bool) -> torch.Tensor:
            gen = torch.Generator(device=self.device).manual_seed(seed)
            s, d = self.image_size, self.ema_model.decoder.cfg.cond_channels
            x_T = torch.randn(n, 3, s, s, generator=gen, device=self.device)
            z = torch.randn(n, d, generator=gen, device=self.device)
            return self.render(x_T, z, T=2 if warm else T)

        return [GenerationMode(f"T={T}", f"render DDIM-{T} with random z_sem (no latent DDIM in this model)", render)]

    def reconstruction_codes(self, T: int = 20, **unused) -> list[ReconstructionCode]:
        """z_sem + DDIM-inverted x_T (near-exact), and z_sem alone with a random x_T (what z_sem keeps)."""

        def inferred(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            z = self.encode(x)
            return self.render(self.encode_stochastic(x, z, T=T), z, T=T)

        def random(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            noise = torch.randn(x.shape, generator=gen, device=gen.device)
            return self.render(noise, self.encode(x), T=T)

        return [
            ReconstructionCode(f"z_sem + inferred x_T (DDIM-{T})", inferred),
            ReconstructionCode(f"z_sem only, random x_T (DDIM-{T})", random),
        ]

    @property
    def has_latent(self) -> bool:
        return self.latent_conf is not None

    @property
    def classes(self) -> list[str] | None:
        """Class names of a class-conditional latent DDIM (index order), None for an unconditional one."""
        return list(self.latent_conf.classes) if self.has_latent and self.latent_conf.classes else None

    def check_condition(self, cls=None, guidance: float | None = None) -> None:
        """Raise a clear error for a class request this checkpoint cannot serve (before any sampling)."""
        check_condition(
            cls,
            guidance,
            self.classes,
            "this one's latent DDIM is unconditional (train it with model.latent.classes=auto)",
        )

    @torch.no_grad()
    def sample_latents(
        self,
        n: int,
        device: Device = None,
        T_latent: int | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        normalised: bool = False,
        cls=None,
        guidance: float | None = None,
        sampler: str = "ddim",
    ) -> torch.Tensor:
        """Draw z_sem (n, D) with the EMA latent DDIM (``normalised``: before de-normalisation).

        ``cls``/``guidance`` as in ``sample``; with no class a conditional net runs its unconditional branch.
        ``sampler`` (ddim | dpmpp_2m | unipc) solves the latent diffusion's ODE in T_latent steps.
        """
        if not self.has_latent or not bool(self.latent_ready):
            raise RuntimeError(
                "this checkpoint has no trained latent DDIM, so it cannot sample z_sem: train "
                "stage 2 with template=<res>_latent (or demo_latent) and load that checkpoint"
            )
        device = torch.device(device) if device is not None else self.device
        if noise is None:
            noise = torch.randn(n, self.latent_mean.shape[0], generator=generator, device=device)
        d = self.latent_conf.diffusion
        net = self.ema_model.latent_net
        model_fn = net
        if cls is not None or guidance is not None:
            self.check_condition(cls, guidance)
            idx = requested_classes(cls, n, self.classes, device=self.device)
            w = 1.0 if guidance is None else guidance
            model_fn = guided_model_fn(lambda z, t, c: net(z, t, cls=c), idx, net.null_class, w)
        zn = get_sampler(sampler)(
            model_fn,
            noise.to(self.device).float(),
            self.latent_schedule,
            T_latent or self.latent_conf.T_latent,
            clip_x0=False,
            prediction=d.prediction,
            # the codes keep DPM-Solver's λ-uniform steps: the image default (quadratic) was measured on images only
            **solver_options(sampler, None if sampler == "ddim" else "logsnr"),
        )
        return zn if normalised else self.denormalise_latents(zn)

    def denormalise_latents(self, zn: torch.Tensor) -> torch.Tensor:
        """z = z̃ σ + μ with the statistics of the latents file the latent DDIM was trained on."""
        return zn * self.latent_std + self.latent_mean

    def decoder_fn(self, cond: torch.Tensor):
        """ε̂(x_t, t) of the EMA decoder with z_sem ``cond`` bound: the ``model_fn`` of the samplers."""
        dec = inference_fn(self.ema_model.decoder, self.eval_conf.inference_compile)
        cond = cond.to(self.device)

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            check_preempted()  # a pre-emption signal stops a long validation/generation between two steps
            return dec(x, t, cond=cond)

        return model_fn

    def sample_unavailable(self) -> str | None:
        if self.has_latent and bool(self.latent_ready):
            return None
        return (
            "this checkpoint has no trained latent DDIM (stage 2), so it cannot draw z_sem: train one with "
            "template=<res>_latent (or demo_latent, or scripts/pipeline.sh) and use that checkpoint"
        )

    def predict_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """z_sem of a batch of tiles by the EMA encoder, with each item's dataset index (latent inference)."""
        x = batch["img"].to(memory_format=self.memory_format)
        return {"z": self.ema_model.encoder(x).float(), "index": batch["index"]}
