"""Transformer autoencoder with a VAE bottleneck: ViT encoder → (μ, log σ²) → z → transformer decoder.

The fast baseline of rockgen: one encoder pass to a vector code, one decoder pass back to pixels, so
"generation" is drawing a z and decoding it (blurrier than diffusion, but instant). Pure PyTorch.

    net = ViTAutoencoder(ViTAEConfig(image_size=64, patch_size=8))
    mu, logvar = net.encode(x)               # x (B, 3, 64, 64) in [-1, 1] → (B, latent_dim) each
    z = reparameterize(mu, logvar)           # z = μ + σ·ε  (Kingma & Welling 2014, eq. 10)
    x_hat = net.decode(z)                    # (B, 3, 64, 64): regression of the [-1, 1] pixels (unclamped)
    kl = kl_to_standard_normal(mu, logvar)   # (B,) KL(q(z|x) ‖ N(0, I)) in nats (ibid., appendix B)

Encoder: p×p patches → linear embedding (a strided conv) + learned positions; ``latent_tokens`` learned query
tokens are prepended, a pre-norm transformer mixes everything, and the query tokens' outputs (flattened) give
μ and log σ². Decoder: z → ``latent_tokens`` tokens, followed by one learned token per patch position; a
second transformer, then each position token → a p×p patch of ``head_channels`` features, and a 3×3
convolution over the whole image smooths the seams between patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rockgen.models.nn import to_config

LOGVAR_RANGE = (-30.0, 20.0)  # σ² in [1e-13, 5e8]: keeps exp(logvar) finite early in training


@dataclass
class ViTAEConfig:
    """Transformer autoencoder hyper-parameters; defaults are the rock64 preset."""

    image_size: int = 64  # square input side; must divide by patch_size
    patch_size: int = 8  # 64 px / 8 = 8×8 = 64 tokens; attention cost grows with (image_size/patch_size)^4
    in_channels: int = 3
    width: int = 384  # token width of both transformers
    encoder_depth: int = 6
    decoder_depth: int = 6
    num_heads: int = 6  # must divide width
    mlp_ratio: float = 4.0
    latent_dim: int = 512  # size of z; 512 = DiffAE's z_sem, so the two latent spaces compare one to one
    latent_tokens: int = 4  # learned tokens that read z out of the encoder and carry it into the decoder
    head_channels: int = 32  # features per pixel before the final 3×3 conv; 0 = patches straight to RGB
    # > 0: a convolutional stem (stride-2 3×3 convs down to the patch grid) and head (nearest ×2 upsampling +
    # 3×3 convs back to pixels) of this many channels replace the linear patch embedding and patch head, so
    # local texture is modelled by convolutions and the transformers only mix the tile's layout. 0 = pure ViT.
    conv_channels: int = 0
    dropout: float = 0.0  # attention and MLP dropout
    gradient_checkpointing: bool = False  # recompute block activations in backward (512 px presets)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) → (B, (H/p)·(W/p), p·p·C), patches row-major, pixels inside a patch row-major."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, size: int) -> torch.Tensor:
    """Inverse of ``patchify`` for a square image: (B, N, p·p·C) → (B, C, size, size)."""
    b, n, d = tokens.shape
    g, c = size // p, d // (p * p)
    x = tokens.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, size, size)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = μ + exp(½ log σ²)·ε, ε ~ N(0, I): a sample of q(z|x) that gradients flow through."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + (0.5 * logvar).exp() * eps


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) summed over the last dim: ½ Σ (μ² + σ² − 1 − log σ²) → (B,)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (Xiong et al. 2020)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, width) → (B, N, width)."""
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(h.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of pre-norm blocks with a final LayerNorm; optional gradient checkpointing per block."""

    def __init__(self, cfg: ViTAEConfig, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.gradient_checkpointing = cfg.gradient_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)


class ViTAutoencoder(nn.Module):
    """x (B, 3, S, S) in [-1, 1] ⇄ z (B, latent_dim); ``encode`` gives the posterior q(z|x) = N(μ, σ²)."""

    def __init__(self, cfg: ViTAEConfig):
        super().__init__()
        self.cfg = cfg = to_config(cfg, ViTAEConfig)
        _check(cfg)
        w, p, m = cfg.width, cfg.patch_size, cfg.latent_tokens
        self.num_patches = (cfg.image_size // p) ** 2
        # encoder
        if cfg.conv_channels:
            self.patch_embed = conv_stem(cfg.in_channels, cfg.conv_channels, w, p)
        else:
            self.patch_embed = nn.Conv2d(cfg.in_channels, w, p, stride=p)  # = a linear map of each flattened patch
        self.enc_pos = nn.Parameter(torch.zeros(1, self.num_patches, w))
        self.enc_queries = nn.Parameter(torch.zeros(1, m, w))
        self.encoder = Transformer(cfg, cfg.encoder_depth)
        self.to_moments = nn.Linear(m * w, 2 * cfg.latent_dim)  # → [μ, log σ²]
        # decoder
        self.from_latent = nn.Linear(cfg.latent_dim, m * w)
        self.dec_pos = nn.Parameter(torch.zeros(1, self.num_patches, w))
        self.decoder = Transformer(cfg, cfg.decoder_depth)
        out = cfg.head_channels or cfg.in_channels
        if cfg.conv_channels:
            self.to_patches = nn.Linear(w, cfg.conv_channels)  # one feature vector per patch position
            self.head = conv_head(cfg.conv_channels, cfg.in_channels, p)
        else:
            self.to_patches = nn.Linear(w, p * p * out)
            self.head = (
                nn.Sequential(nn.GELU(), nn.Conv2d(out, cfg.in_channels, 3, padding=1))
                if cfg.head_channels
                else nn.Identity()
            )
        self.apply(_init_weights)
        for param in (self.enc_pos, self.enc_queries, self.dec_pos):
            nn.init.trunc_normal_(param, std=0.02)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, S, S) in [-1, 1] → μ (B, latent_dim), log σ² (B, latent_dim) (clamped to LOGVAR_RANGE)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.enc_pos  # (B, N, width)
        queries = self.enc_queries.expand(x.shape[0], -1, -1)
        h = self.encoder(torch.cat([queries, tokens], dim=1))[:, : self.cfg.latent_tokens]
        mu, logvar = self.to_moments(h.flatten(1)).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) → x̂ (B, C, S, S), a regression of [-1, 1] pixels (not clamped)."""
        b, m = z.shape[0], self.cfg.latent_tokens
        memory = self.from_latent(z).reshape(b, m, self.cfg.width)
        h = self.decoder(torch.cat([memory, self.dec_pos.expand(b, -1, -1)], dim=1))[:, m:]
        if self.cfg.conv_channels:
            g = self.cfg.image_size // self.cfg.patch_size
            return self.head(self.to_patches(h).transpose(1, 2).reshape(b, -1, g, g))  # (B, C, g, g) → pixels
        return self.head(unpatchify(self.to_patches(h), self.cfg.patch_size, self.cfg.image_size))

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x → (x̂, μ, log σ²), decoding a reparameterised z (``sample``) or μ itself."""
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar) if sample else mu), mu, logvar


def conv_stem(in_channels: int, channels: int, width: int, patch: int) -> nn.Sequential:
    """(B, in, S, S) → (B, width, S/p, S/p): 3×3 conv, then log2(p) stride-2 3×3 convs (GELU between), 1×1."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1), nn.GELU()]
    for _ in range(patch.bit_length() - 1):
        layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.GELU()]
    return nn.Sequential(*layers, nn.Conv2d(channels, width, 1))


def conv_head(channels: int, out_channels: int, patch: int) -> nn.Sequential:
    """(B, C, S/p, S/p) → (B, out, S, S): log2(p) × (nearest ×2, 3×3 conv, GELU), then a 3×3 conv to RGB."""
    layers: list[nn.Module] = [nn.GELU()]
    for _ in range(patch.bit_length() - 1):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1), nn.GELU()]
    return nn.Sequential(*layers, nn.Conv2d(channels, out_channels, 3, padding=1))


def _init_weights(module: nn.Module) -> None:
    """ViT initialisation: truncated-normal(0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _check(cfg: ViTAEConfig) -> None:
    """ValueError naming the bad ViTAEConfig field."""
    if cfg.patch_size < 1 or cfg.image_size % cfg.patch_size:
        raise ValueError(f"ViTAEConfig.image_size={cfg.image_size} must be a multiple of patch_size={cfg.patch_size}")
    if cfg.num_heads < 1 or cfg.width % cfg.num_heads:
        raise ValueError(f"ViTAEConfig.num_heads={cfg.num_heads} must divide width={cfg.width}")
    for name in ("in_channels", "width", "encoder_depth", "decoder_depth", "latent_dim", "latent_tokens"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"ViTAEConfig.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.conv_channels < 0 or (cfg.conv_channels and cfg.patch_size & (cfg.patch_size - 1)):
        raise ValueError(
            f"ViTAEConfig.conv_channels={cfg.conv_channels} needs a power-of-two patch_size (got {cfg.patch_size})"
        )
    if cfg.head_channels < 0:
        raise ValueError(f"ViTAEConfig.head_channels must be >= 0, got {cfg.head_channels}")
