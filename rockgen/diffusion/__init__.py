"""Diffusion maths with no network in it: schedules, q_sample, parameterisations, losses."""

from rockgen.diffusion.gaussian import (
    eps_from_x0,
    q_sample,
    regression_loss,
    sample_timesteps,
    to_eps_and_x0,
    training_target,
    x0_from_eps,
)
from rockgen.diffusion.objective import diffusion_loss
from rockgen.diffusion.schedules import Schedule, extract, make_betas

__all__ = [
    "Schedule",
    "diffusion_loss",
    "eps_from_x0",
    "extract",
    "make_betas",
    "q_sample",
    "regression_loss",
    "sample_timesteps",
    "to_eps_and_x0",
    "training_target",
    "x0_from_eps",
]
