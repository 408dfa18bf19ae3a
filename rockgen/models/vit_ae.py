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
convolution over the whole image smooths the seams between patches. ``bottleneck="spatial"`` replaces the latent
tokens by per-position linear read-out/write-in, and ``linear_path`` adds a global linear encoder/decoder; the
demo and rock presets use them (see ``ViTAEConfig``; the defaults keep older checkpoints loadable).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rockgen.models.nn import to_config

LOGVAR_RANGE = (-30.0, 20.0)  # σ² in [1e-13, 5e8]: keeps exp(logvar) finite early in training
BOTTLENECKS = ("tokens", "spatial")


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
    # How z enters and leaves the transformers. "tokens": ``latent_tokens`` learned query tokens read z out of
    # the encoder and z becomes that many decoder tokens, so the decoder has to learn attention from every
    # position to them before its output can vary over the tile. "spatial": every patch position's token is
    # projected to ``bottleneck_channels`` values and the (N·c) of them linearly to (μ, log σ²); z is mapped
    # linearly back to N tokens of c values; so each position reads z directly.
    bottleneck: str = "tokens"
    bottleneck_channels: int = 16  # c of the "spatial" bottleneck
    # A global linear path beside the transformers: μ += A·vec(x), x̂ += B·z (B starts at zero). It holds a
    # linear autoencoder (PCA's subspace, Baldi & Hornik 1989), which gradient descent finds within a few
    # hundred steps, so the transformers only learn the non-linear rest. 2·(3·S²)·latent_dim parameters:
    # 0.8 M at the demo's 32 px, 12.6 M at 64 px, so only for small tiles.
    linear_path: bool = False
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
        self.encoder = Transformer(cfg, cfg.encoder_depth)
        self.spatial = cfg.bottleneck == "spatial"
        if self.spatial:
            c, n = cfg.bottleneck_channels, self.num_patches
            self.enc_queries = None
            self.to_moments = nn.Sequential(nn.Linear(w, c), nn.Flatten(1), nn.Linear(n * c, 2 * cfg.latent_dim))
            self.from_latent = nn.Sequential(nn.Linear(cfg.latent_dim, n * c), nn.Unflatten(1, (n, c)), nn.Linear(c, w))
        else:
            self.enc_queries = nn.Parameter(torch.zeros(1, m, w))
            self.to_moments = nn.Linear(m * w, 2 * cfg.latent_dim)  # → [μ, log σ²]
            self.from_latent = nn.Linear(cfg.latent_dim, m * w)
        # decoder
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
        if cfg.linear_path:
            pixels = cfg.in_channels * cfg.image_size**2
            self.linear_enc = nn.Linear(pixels, cfg.latent_dim, bias=False)
            self.linear_dec = nn.Linear(cfg.latent_dim, pixels, bias=False)
        self.apply(_init_weights)
        if cfg.linear_path:
            nn.init.normal_(self.linear_enc.weight, std=self.linear_enc.in_features**-0.5)  # μ of unit scale
            nn.init.zeros_(self.linear_dec.weight)  # the decoder starts as the transformer path alone
        for param in (self.enc_pos, self.enc_queries, self.dec_pos):
            if param is not None:
                nn.init.trunc_normal_(param, std=0.02)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, S, S) in [-1, 1] → μ (B, latent_dim), log σ² (B, latent_dim) (clamped to LOGVAR_RANGE)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.enc_pos  # (B, N, width)
        if self.spatial:
            mu, logvar = self.to_moments(self.encoder(tokens)).chunk(2, dim=-1)  # (B, N, w) → (B, N·c) → 2d
        else:
            queries = self.enc_queries.expand(x.shape[0], -1, -1)
            h = self.encoder(torch.cat([queries, tokens], dim=1))[:, : self.cfg.latent_tokens]
            mu, logvar = self.to_moments(h.flatten(1)).chunk(2, dim=-1)
        if self.cfg.linear_path:
            mu = mu + self.linear_enc(x.flatten(1))
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) → x̂ (B, C, S, S), a regression of [-1, 1] pixels (not clamped)."""
        x_hat = self._decode_tokens(z)
        if self.cfg.linear_path:
            x_hat = x_hat + self.linear_dec(z).view(x_hat.shape)
        return x_hat

    def _decode_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """The transformer path of ``decode``: z (B, latent_dim) → (B, C, S, S)."""
        b, m = z.shape[0], self.cfg.latent_tokens
        if self.spatial:
            h = self.decoder(self.from_latent(z) + self.dec_pos)  # (B, N, width): one token per position
        else:
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
    if cfg.bottleneck not in BOTTLENECKS:
        raise ValueError(f"ViTAEConfig.bottleneck must be one of {BOTTLENECKS}, got {cfg.bottleneck!r}")
    if cfg.bottleneck_channels < 1:
        raise ValueError(f"ViTAEConfig.bottleneck_channels must be >= 1, got {cfg.bottleneck_channels}")
    if cfg.head_channels < 0:
        raise ValueError(f"ViTAEConfig.head_channels must be >= 0, got {cfg.head_channels}")
