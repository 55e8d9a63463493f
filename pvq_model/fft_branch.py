"""FFT branch of the PVQ-VAE encoder: global structure from a learned spectral filter.

A learned per-channel filter on the lowest spatio-temporal frequencies of a feature map (real FFT
over T, H, W), so every output position sees the whole clip, then a 1x1x1 projection added back to
the features. The encoder applies it after its deepest blocks (``model.encoder.fft_blocks``).

It runs in fp32 outside autocast (FFTs are precision-sensitive); its projection is a
:class:`~pvq_model.blocks.Conv3d`, whose weights follow the input dtype. The DWT branch (local
detail) is :mod:`pvq_model.dwt_branch`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import Conv3d
from .quantizers.base import fp32


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
