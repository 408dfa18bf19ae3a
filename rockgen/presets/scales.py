"""The resolution axis of the presets: one ``Scale`` (network widths, batch, budget) per image size.

``rock64``–``rock256`` are the official DiffAE ladders (ffhq64_autoenc, ffhq128_autoenc_130M, ffhq256_autoenc);
``rock512`` is rockgen's own (see :data:`SCALES`); ``demo`` is a tiny 32-px scale for 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass

RESOLUTIONS = (64, 128, 256, 512)


@dataclass(frozen=True)
class Scale:
    """Network widths and training budget of one resolution, shared by every method at that resolution.

    UNet and encoder share the base width, block count and attention levels; the encoder goes one level deeper.
    """

    image_size: int
    base: int  # model_channels of decoder and encoder
    decoder_mult: tuple[int, ...]
    encoder_mult: tuple[int, ...]
    attention: tuple[int, ...] = (16,)
    num_res_blocks: int = 2
    dropout: float = 0.1  # decoder ResBlocks (official 0.1)
    embed_channels: int = 512  # time-embedding width
    z_channels: int = 512  # z_sem width (encoder output = decoder cond)
    batch_size: int = 128  # global (split over the DDP world size), as the official templates after scale_up_gpus
    total_samples: int = 72_000_000  # training budget in images; max_steps = total_samples // batch_size
    vit: tuple[int, int, int, int] = (8, 384, 6, 128)  # VAE baseline: (patch, width, depth, global batch)

    @property
    def checkpointing(self) -> bool:
        """Gradient checkpointing at 512 px, where activations would not fit otherwise."""
        return self.image_size >= 512


# 512 px: rock256's ladder (widths 256:128 … 16:512, 8:512) with one cheap 64-wide level in front, attention
# only at 16 px. 170.06 M parameters (decoder 139.86 + encoder 30.19), 986 GFLOP per decoder forward; saved
# activations 3.6 + 0.5 GiB per image in bf16 (7.2 + 1.0 fp32), about 0.75 GiB with gradient checkpointing,
# which the preset turns on. A base width of 128 at 512² instead (ch 128, (1,1,1,2,2,4,4)) has the same size
# but 1.8x the FLOPs and 5.3 GiB of activations: the first level dominates. Global batch 32: 4 per GPU on
# 8 GPUs fits 40 GB cards with checkpointing.
# VAE widths are rockgen's choice (ViT-S/-B-like), with the "spatial" bottleneck: 64 px 23.8 M params,
# 128 px 58.2 M, 256 px 183.7 M, 512 px (1024 tokens) 203.8 M.
SCALES: dict[int, Scale] = {
    64: Scale(64, 64, (1, 2, 4, 8), (1, 2, 4, 8, 8)),
    128: Scale(128, 128, (1, 1, 2, 3, 4), (1, 1, 2, 3, 4, 4), total_samples=130_000_000, vit=(8, 512, 8, 64)),
    256: Scale(
        256,
        128,
        (1, 1, 2, 2, 4, 4),
        (1, 1, 2, 2, 4, 4, 4),
        batch_size=64,
        total_samples=200_000_000,
        vit=(16, 768, 12, 64),
    ),
    512: Scale(
        512,
        64,
        (1, 2, 2, 4, 4, 8, 8),
        (1, 2, 2, 4, 4, 8, 8, 8),
        batch_size=32,
        total_samples=200_000_000,
        vit=(16, 768, 12, 32),
    ),
}

# The demo: a DiffAE that trains, validates and checkpoints in minutes on 2 CPU cores.
DEMO = Scale(
    32,
    32,
    (1, 2, 2),
    (1, 2, 2, 4),
    attention=(8,),
    num_res_blocks=1,
    dropout=0.0,
    embed_channels=128,
    z_channels=128,
    batch_size=32,
)


def scale(resolution: int) -> Scale:
    """The scale of ``rock<resolution>``; a clear error for a size without one."""
    if resolution not in SCALES:
        raise ValueError(f"no preset for resolution {resolution}; choose one of {RESOLUTIONS}")
    return SCALES[resolution]
