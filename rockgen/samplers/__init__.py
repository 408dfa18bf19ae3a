"""Samplers as plain functions over ``model_fn(x_t, t)``: DDIM, DDIM inversion, DDPM ancestral,
classifier-free guidance (a wrapper that turns a class-conditional network into a ``model_fn``)."""

from rockgen.samplers.ddim import ddim_invert, ddim_sample, ddim_step, ddim_timesteps
from rockgen.samplers.ddpm import ddpm_sample
from rockgen.samplers.guidance import cfg_combine, guided_model_fn

__all__ = ["cfg_combine", "guided_model_fn", "ddim_invert", "ddim_sample", "ddim_step", "ddim_timesteps", "ddpm_sample"]
