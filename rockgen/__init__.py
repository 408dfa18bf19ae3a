"""rockgen: Diffusion Autoencoders (DiffAE) and baselines for synthetic rock image tiles."""

__version__ = "0.1.0"
