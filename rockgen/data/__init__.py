"""Rock image data: finding and decoding files, square-tile datasets, demo rocks, the Lightning DataModule.

Import order is one-way: ``images`` (Pillow/numpy) <- ``tiles`` (+ torch) <- ``datamodule`` (+ Lightning);
``demo`` needs numpy and Pillow only. Nothing here imports Hydra.
"""

from rockgen.data.datamodule import TileDataModule
from rockgen.data.demo import ROCK_TYPES, generate_demo_tiles, make_demo_tile, write_demo_dataset
from rockgen.data.images import (
    IMAGE_EXTENSIONS,
    XYZ,
    ImageReadError,
    NoImagesFoundError,
    find_images,
    image_size,
    load_rgb,
    parse_xyz,
)
from rockgen.data.latents import LatentDataModule
from rockgen.data.tiles import CorruptImageWarning, TileDataset, probe_images, split_files

__all__ = [
    "IMAGE_EXTENSIONS",
    "ROCK_TYPES",
    "XYZ",
    "CorruptImageWarning",
    "ImageReadError",
    "LatentDataModule",
    "NoImagesFoundError",
    "TileDataModule",
    "TileDataset",
    "find_images",
    "generate_demo_tiles",
    "image_size",
    "load_rgb",
    "make_demo_tile",
    "parse_xyz",
    "probe_images",
    "split_files",
    "write_demo_dataset",
]
