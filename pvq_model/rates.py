"""Rates of a configured PVQ-VAE: latent shape, compression ratio and bits per pixel.

Pure arithmetic on the config (nothing is built), shared by ``pvq info`` and the reports, so a
PVQ-VAE preset can be set beside a peer tokenizer at equal compression:

* **compression** (ft, fh, fw, d): the latent grid is T/ft x H/fh x W/fw with d channels
  (the paper: 16 x 32 x 32 x 16; the presets in configs/presets/: 4x8x8x16, 8x16x16x16).
* **compression ratio**: input values per latent value, ft * fh * fw * C / d (C = 3 colours;
  the paper: 16 * 32 * 32 * 3 / 16 = 3072). The figure peers quote (VidTok, Cosmos-Tokenizer).
* **bits per pixel** of the quantized latent: every quantizer level's tokens times log2(codebook
  size), over the clip's T * H * W pixels (a pixel is one (t, y, x) position, its 3 colours
  together). It is the fixed-length code, before any entropy coding. Tokens are counted on the
  padded latent grid the model emits (ceil(T / ft) x ...), and pyramid levels at the sizes the
  quantizer uses (:func:`~pvq_model.quantizers.residual.level_size`, rounded per axis, at least
  1), so the value depends slightly on the clip size; the one-number summaries use
  :data:`REFERENCE_CLIP`. The ``identity`` quantizer is continuous: it has no bits (None).
"""

from __future__ import annotations

import math

from .config import PVQConfig
from .quantizers import quantizer_class

REFERENCE_CLIP: tuple[int, int, int] = (32, 512, 512)
"""(T, H, W) of the one-number bits-per-pixel summaries (``pvq info --all-presets``): a middle
paper bucket (512 x 512) at 32 frames."""

def latent_shape(cfg: PVQConfig, t: int, h: int, w: int) -> tuple[int, int, int, int]:
    """(t', h', w', d) latent of a (T=t, H=h, W=w) clip: each axis ceil-divided by its factor (the
    clip is padded to the grid first, see :func:`~pvq_model.vae.pad_to_grid`)."""
    ft, fh, fw = cfg.model.compression
    return math.ceil(t / ft), math.ceil(h / fh), math.ceil(w / fw), cfg.model.latent_dim


def compression_ratio(cfg: PVQConfig) -> float:
    """Input values per latent value: ft * fh * fw * in_channels / latent_dim (the paper: 3072)."""
    ft, fh, fw = cfg.model.compression
    return ft * fh * fw * cfg.model.in_channels / cfg.model.latent_dim


def bits_per_token(cfg: PVQConfig) -> float | None:
    """log2(codebook size) bits per token (16 for the 65,536-code LFQ); None for ``identity``."""
    if cfg.quantizer.type == "identity":
        return None
    return math.log2(cfg.quantizer.codebook_size)


def token_grids(cfg: PVQConfig, t: int, h: int, w: int) -> list[tuple[int, int, int]] | None:
    """(t, h, w) token grid of every quantizer level for a (T=t, H=h, W=w) clip, coarsest first;
    None for the continuous ``identity`` quantizer. Each quantizer class owns its grid
    (:meth:`pvq_model.quantizers.base.Quantizer.token_grids`): one level for VQ/GVQ/LFQ,
    ``num_levels`` full-size levels for the residual ones, one per pyramid scale for PSVQ/PVQ."""
    full = latent_shape(cfg, t, h, w)[:3]
    return quantizer_class(cfg.quantizer.type).token_grids(cfg.quantizer, full)


def bits_per_pixel(cfg: PVQConfig, t: int, h: int, w: int) -> float | None:
    """Bits of the token indices of a (T=t, H=h, W=w) clip per pixel: sum over levels of
    tokens * log2(codebook size), over t * h * w. None for ``identity`` (continuous)."""
    grids = token_grids(cfg, t, h, w)
    if grids is None:
        return None
    tokens = sum(a * b * c for a, b, c in grids)
    return tokens * bits_per_token(cfg) / (t * h * w)


def describe(cfg: PVQConfig) -> str:
    """One line: compression, ratio and code size, e.g. ``16x32x32x16 (ratio 3072:1), pvq 4 levels
    x 16 bits``."""
    ft, fh, fw = cfg.model.compression
    q = cfg.quantizer
    head = f"{ft}x{fh}x{fw}x{cfg.model.latent_dim} (ratio {compression_ratio(cfg):g}:1)"
    bits = bits_per_token(cfg)
    if bits is None:
        return f"{head}, {q.type}: continuous"
    levels = len(token_grids(cfg, ft, fh, fw))
    return f"{head}, {q.type} {levels} level{'s' if levels > 1 else ''} x {bits:.4g} bits"
