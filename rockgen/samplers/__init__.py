"""Samplers as plain functions over ``model_fn(x_t, t)``: DDIM, DDIM inversion, DDPM ancestral, the fast
multistep ODE solvers DPM-Solver++(2M, 3M) and UniPC (``sampler=ddim|dpmpp_2m|dpmpp_3m|unipc``), and classifier-free
guidance (a wrapper that turns a class-conditional network into a ``model_fn``)."""

from rockgen.samplers.ddim import ddim_invert, ddim_sample, ddim_step, ddim_timesteps
from rockgen.samplers.ddpm import ddpm_sample
from rockgen.samplers.guidance import cfg_combine, guided_model_fn
from rockgen.samplers.multistep import dpmpp_2m_sample, dpmpp_3m_sample, unipc_sample
from rockgen.samplers.spacing import SPACINGS, solver_timesteps

SAMPLERS = {
    "ddim": ddim_sample,
    "dpmpp_2m": dpmpp_2m_sample,
    "dpmpp_3m": dpmpp_3m_sample,
    "unipc": unipc_sample,
}


def get_sampler(name: str):
    """The sampling function called ``name`` (all share ``(model_fn, x_T, schedule, num_steps, **kw)``)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)} (setting: sampler=...)")
    return SAMPLERS[name]


def solver_options(sampler: str, spacing: str | None = None) -> dict:
    """The keyword arguments that pick ``spacing`` for ``sampler``, checked: {} for the default spacing.

    ``spacing`` (``rockgen.samplers.spacing``) applies to the multistep solvers; DDIM keeps its kept steps
    (the inversion path), so a spacing asked of it is an error rather than silently ignored.
    """
    get_sampler(sampler)
    if spacing is None:
        return {}
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {SPACINGS} (setting: spacing=...)")
    if sampler == "ddim":
        raise ValueError(f"spacing={spacing} applies to sampler=dpmpp_2m|dpmpp_3m|unipc; DDIM uses its kept steps")
    return {"spacing": spacing}


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
    "dpmpp_3m_sample",
    "get_sampler",
    "guided_model_fn",
    "solver_options",
    "solver_timesteps",
    "unipc_sample",
]
