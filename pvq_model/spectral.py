"""Frequency branches of the PVQ-VAE encoder.

* :class:`FFTBranch` — global structure. A learned filter on the lowest spatio-temporal
  frequencies of a feature map (real FFT over T, H, W), so every output position sees the whole
  clip, then a 1x1x1 projection added back to the features.
* :func:`haar_dwt` / :class:`DWTBranch` — local detail. The Haar wavelet transform is a fixed,
  orthonormal transform: along one axis, neighbouring samples (a, b) become a low band
  (a + b) / sqrt(2) and a high band (a - b) / sqrt(2). Applied over H and W (and T when the matching
  encoder block halves time) it splits a clip into 4 (or 8) half-size sub-bands; cascading on the
  all-low band gives the next level. Each level's sub-bands are projected and added to the encoder
  block of the same resolution, handing it the high-frequency detail that strided convolutions blur.

Both run in fp32 outside autocast (FFTs and wavelet sums are precision-sensitive); their
projections are :class:`~pvq_model.blocks.Conv3d`, whose weights follow the input dtype.
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


def _signed_modes(n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """FFT positions with |frequency| < m along an axis of length n (frequency -m included), and
    their weight slots (f + m). Computed from the sizes alone, so it also works on the meta device."""
    freqs = [i if i < (n + 1) // 2 else i - n for i in range(n)]
    keep = [(i, f + m) for i, f in enumerate(freqs) if -m <= f < m]
    pos, slot = zip(*keep)
    return torch.tensor(pos, device=device), torch.tensor(slot, device=device)


class FFTBranch(nn.Module):
    """x + proj(irfft(W * rfft(x))) with W a learned per-channel complex filter on the lowest
    ``modes`` = (mt, mh, mw) frequencies (signed along T and H, non-negative along W)."""

    def __init__(self, channels: int, modes: list[int]):
        super().__init__()
        mt, mh, mw = modes
        self.modes = (mt, mh, mw)
        weight = torch.zeros(channels, 2 * mt, 2 * mh, mw, 2)
        weight[..., 0] = 1.0
        self.weight = nn.Parameter(weight + 0.02 * torch.randn_like(weight))
        self.proj = Conv3d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        with fp32(x.device.type):
            xf = x.float()
            t, h, w = xf.shape[2:]
            spec = torch.fft.rfftn(xf, dim=(-3, -2, -1), norm="ortho")  # (B, C, t, h, w//2+1)
            it, wt = _signed_modes(t, self.modes[0], x.device)
            ih, wh = _signed_modes(h, self.modes[1], x.device)
            iw = torch.arange(min(self.modes[2], w // 2 + 1), device=x.device)
            sel = (it[:, None, None], ih[None, :, None], iw[None, None, :])
            filt = torch.view_as_complex(self.weight.float())[:, wt[:, None, None], wh[None, :, None], iw[None, None, :]]
            out = torch.zeros_like(spec)
            out[:, :, sel[0], sel[1], sel[2]] = spec[:, :, sel[0], sel[1], sel[2]] * filt
            glob = torch.fft.irfftn(out, s=(t, h, w), dim=(-3, -2, -1), norm="ortho")
            y = xf + self.proj(glob)
        return y.to(x.dtype)
