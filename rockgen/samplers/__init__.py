"""Samplers as plain functions over ``model_fn(x_t, t)``: DDIM, DDIM inversion, DDPM ancestral."""

from rockgen.samplers.ddim import ddim_invert, ddim_sample, ddim_step, ddim_timesteps
from rockgen.samplers.ddpm import ddpm_sample

__all__ = ["ddim_invert", "ddim_sample", "ddim_step", "ddim_timesteps", "ddpm_sample"]
