"""Samplers as plain functions over ``model_fn(x_t, t)``: DDIM, DDIM inversion, DDPM ancestral, the fast
multistep ODE solvers DPM-Solver++(2M) and UniPC (``sampler=ddim|dpmpp_2m|unipc``), and classifier-free
guidance (a wrapper that turns a class-conditional network into a ``model_fn``)."""

from rockgen.samplers.ddim import ddim_invert, ddim_sample, ddim_step, ddim_timesteps
from rockgen.samplers.ddpm import ddpm_sample
from rockgen.samplers.guidance import cfg_combine, guided_model_fn
from rockgen.samplers.multistep import dpmpp_2m_sample, unipc_sample
from rockgen.samplers.spacing import SPACINGS, solver_timesteps

SAMPLERS = {"ddim": ddim_sample, "dpmpp_2m": dpmpp_2m_sample, "unipc": unipc_sample}


def get_sampler(name: str):
    """The sampling function called ``name`` (all share ``(model_fn, x_T, schedule, num_steps, **kw)``)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)} (setting: sampler=...)")
    return SAMPLERS[name]


__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "cfg_combine",
    "ddim_invert",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_sample",
    "dpmpp_2m_sample",
    "get_sampler",
    "guided_model_fn",
    "solver_timesteps",
    "unipc_sample",
]
