"""Multi-level residual quantization, the common loop of RVQ, RVQ+LFQ, PSVQ and PVQ.

Level k quantizes what the previous levels left over, optionally at a coarser *pyramid* scale
(VAR-style next-scale residuals):

    r_k   = z - f_hat                                  residual  (B, D, t, h, w)
    q_k   = g_k * Q_k(down_k(r_k) / g_k)               level code at scale s_k, gain g_k
    f_hat = f_hat + fuse_k(up(q_k))                    token fusion back at full size

``down_k`` is area pooling, ``up`` trilinear interpolation and ``fuse_k`` a per-level module
(identity for RVQ, a convolutional mix for the pyramids). The output passes gradients straight
through to ``z``; the codebooks, gains and fusion layers learn from ``|f_hat - sg(z)|^2`` and the
encoder is committed with ``beta |sg(f_hat) - z|^2`` (as in VAR), plus each level's own aux loss.

The gains make sign-valued (LFQ) levels usable on residuals of any magnitude: :meth:`data_init`
sets each g_k by least squares on a first batch, which makes every level strictly reduce the
residual on that batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blocks import Conv3d
from ..config import ConfigError, QuantizerConfig
from .base import Grid, Quantizer, QuantizerOutput, fp32


class ConvFusion(nn.Module):
    """Pyramidal token fusion: ``(1 - mix) * x + mix * conv3(x)`` (VAR's Phi, one per level)."""

    def __init__(self, dim: int, mix: float):
        super().__init__()
        self.mix = mix
        self.conv = Conv3d(dim, dim, 3, padding=1, bias=False)  # weights follow the fp32 input

    def forward(self, x: Tensor) -> Tensor:
        return (1 - self.mix) * x + self.mix * self.conv(x)


def level_size(size: tuple[int, int, int], scale: float) -> tuple[int, int, int]:
    """Latent size of a pyramid level: each of (t, h, w) scaled and rounded, at least 1."""
    return tuple(max(1, round(n * scale)) for n in size)


class FullSizeLevels:
    """Mixin of RVQ and RVQ+LFQ: ``quantizer.num_levels`` levels, each at the full latent size."""

    @classmethod
    def token_grids(cls, cfg: QuantizerConfig, full: Grid) -> list[Grid]:
        return [full] * cfg.num_levels


class PyramidLevels:
    """Mixin of PSVQ and PVQ: one level per ``quantizer.pyramid_scales`` entry, at its scaled size."""

    @classmethod
    def check_pyramid(cls, cfg: QuantizerConfig) -> None:
        if len(cfg.pyramid_scales) != cfg.num_levels or cfg.pyramid_scales[-1] != 1.0:
            raise ConfigError("quantizer.pyramid_scales: one entry per level, the last 1.0")
        if any(not 0 < s <= 1 for s in cfg.pyramid_scales):
            raise ConfigError("quantizer.pyramid_scales: entries in (0, 1]")

    @classmethod
    def token_grids(cls, cfg: QuantizerConfig, full: Grid) -> list[Grid]:
        return [level_size(full, s) for s in cfg.pyramid_scales]


class ResidualQuantizer(Quantizer):
    def __init__(self, *, levels: list[Quantizer], scales: list[float], fusions: list[nn.Module],
                 commitment_weight: float = 0.25):
        super().__init__()
        if not (len(levels) == len(scales) == len(fusions)):
            raise ValueError("one scale and one fusion module per level")
        self.levels = nn.ModuleList(levels)
        self.fusions = nn.ModuleList(fusions)
        self.scales = list(scales)
        self.dim = levels[0].dim
        self.codebook_size = levels[0].codebook_size
        self.commitment_weight = commitment_weight
        self.gains = nn.Parameter(torch.ones(len(levels)))

    def _up(self, q: Tensor, size: tuple[int, int, int]) -> Tensor:
        if tuple(q.shape[2:]) == size:
            return q
        return F.interpolate(q, size=size, mode="trilinear", align_corners=False)

    def _down(self, r: Tensor, size: tuple[int, int, int]) -> Tensor:
        if tuple(r.shape[2:]) == size:
            return r
        return F.adaptive_avg_pool3d(r, size)

    def forward(self, z: Tensor) -> QuantizerOutput:
        with fp32(z.device.type):
            z = z.float()
            full = tuple(z.shape[2:])
            f_hat = torch.zeros_like(z)
            indices, aux, stats = [], z.new_zeros(()), {}
            z_norm = z.detach().norm().clamp_min(1e-12)
            for k, (level, fusion, scale) in enumerate(zip(self.levels, self.fusions, self.scales)):
                size = level_size(full, scale)
                residual = z.detach() - f_hat.detach()
                gain = self.gains[k]
                out = level(self._down(residual, size) / gain)
                f_hat = f_hat + fusion(self._up(out.quantized * gain, full))
                indices.append(out.indices)
                aux = aux + out.aux_loss
                stats[f"usage/l{k}"] = out.stats["usage"]
                stats[f"perplexity/l{k}"] = out.stats["perplexity"]
                stats[f"residual/l{k}"] = ((z - f_hat).detach().norm() / z_norm)
            aux = aux + F.mse_loss(f_hat, z.detach()) + self.commitment_weight * F.mse_loss(z, f_hat.detach())
            quantized = z + (f_hat - z).detach()
            n = len(self.levels)
            stats["usage"] = sum(stats[f"usage/l{k}"] for k in range(n)) / n
            stats["perplexity"] = sum(stats[f"perplexity/l{k}"] for k in range(n)) / n
        return QuantizerOutput(quantized, indices, aux, stats)

    def decode_indices(self, indices: list[Tensor]) -> Tensor:
        full = tuple(indices[-1].shape[1:]) if self.scales[-1] == 1.0 else None
        if full is None:
            raise ValueError("the last level must be at full latent size to decode")
        out = None
        for k, (level, fusion, idx) in enumerate(zip(self.levels, self.fusions, indices)):
            part = fusion(self._up(level.decode_indices(idx) * self.gains[k], full))
            out = part if out is None else out + part
        return out

    @torch.no_grad()
    def data_init(self, z: Tensor) -> None:
        """Per level: let the level initialise itself on its residual, then set its gain g_k to the
        least-squares step ``<r, d> / <d, d>`` along its fused code ``d`` (clamped positive), so
        the residual norm drops at every level on this batch."""
        with fp32(z.device.type):
            z = z.float()
            full = tuple(z.shape[2:])
            f_hat = torch.zeros_like(z)
            was_training = self.training
            self.eval()
            for k, (level, fusion, scale) in enumerate(zip(self.levels, self.fusions, self.scales)):
                size = level_size(full, scale)
                residual = z - f_hat
                r_k = self._down(residual, size)
                level.data_init(r_k)
                direction = fusion(self._up(level(r_k).quantized, full))
                gain = ((residual * direction).sum() / (direction * direction).sum().clamp_min(1e-12))
                gain = gain.clamp_min(1e-4)
                level.data_init(r_k / gain)
                self.gains[k] = gain
                f_hat = f_hat + fusion(self._up(level(r_k / gain).quantized * gain, full))
            self.train(was_training)
