"""DWT branch of the PVQ-VAE encoder: local detail from a fixed Haar wavelet transform.

The Haar wavelet transform is a fixed, orthonormal transform: along one axis, neighbouring samples
(a, b) become a low band (a + b) / sqrt(2) and a high band (a - b) / sqrt(2). Applied over H and W
(and T when the matching encoder block halves time) it splits a clip into 4 (or 8) half-size
sub-bands; cascading on the all-low band gives the next level. Each level's sub-bands are projected
and added to the encoder block of the same resolution, handing it the high-frequency detail that
strided convolutions blur.

It runs in fp32 outside autocast (wavelet sums are precision-sensitive); its projections are
:class:`~pvq_model.blocks.Conv3d`, whose weights follow the input dtype. The FFT branch (global
structure) is :mod:`pvq_model.fft_branch`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from .blocks import Conv3d
from .quantizers.base import fp32


def _haar_axis(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    a, b = x.unflatten(dim, (x.shape[dim] // 2, 2)).unbind(dim + 1)
    s = 2.0 ** -0.5
    return (a + b) * s, (a - b) * s


def haar_dwt(x: Tensor, temporal: bool = True) -> Tensor:
    """One level of the orthonormal Haar DWT of ``x`` (B, C, T, H, W) with even sizes.

    Returns (B, C, S, T', H/2, W/2) with S = 8 sub-bands (T' = T/2) when ``temporal`` else S = 4
    (T' = T). Band 0 is the all-low band; band index bits are (w, h, t) high-pass flags, i.e. band
    ``1`` is high-pass along W only.
    """
    bands = [x]
    axes = [-1, -2] + ([-3] if temporal else [])
    for axis in axes:
        nxt = []
        for band in bands:
            lo, hi = _haar_axis(band, band.dim() + axis)
            nxt += [lo, hi]
        # keep the bit order: the flag of the first axis is the lowest bit
        bands = nxt[0::2] + nxt[1::2]
    return torch.stack(bands, dim=2)


class DWTBranch(nn.Module):
    """Cascaded Haar levels of the input, each projected to the width of an encoder block."""

    def __init__(self, in_channels: int, widths: list[int], temporal: list[bool]):
        super().__init__()
        self.temporal = list(temporal)
        self.proj = nn.ModuleList(
            Conv3d(in_channels * (8 if t else 4), w, 1) for w, t in zip(widths, temporal))

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x`` (B, C, T, H, W) -> one feature map per level, level l at the l-th block's size."""
        feats = []
        with fp32(x.device.type):
            low = x.float()
            for proj, temporal in zip(self.proj, self.temporal):
                bands = haar_dwt(low, temporal)  # (B, C, S, T', H', W')
                low = bands[:, :, 0]
                feats.append(proj(rearrange(bands, "b c s t h w -> b (c s) t h w")))
        return [f.to(x.dtype) for f in feats]
