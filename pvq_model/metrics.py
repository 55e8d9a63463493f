"""Reconstruction metrics: PSNR (torchmetrics), SSIM (torchmetrics' definition, computed in strips)
and LPIPS (optional, see perceptual.py).

Clips are (B, C, T, H, W) in [-1, 1]; ``mask`` (B, T) marks valid frames (images are clips padded
with zero frames). Metrics are computed per frame on [0, 1] images and averaged over valid frames:
the clip PSNR is the mean of its frames' PSNR. SSIM folds time into the batch (torchmetrics does
a 3D SSIM on 5D input, which is not the paper's metric and fails below 11 frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .perceptual import LPIPS, frames_of


@dataclass
class ClipMetrics:
    psnr: list[float]
    """Per clip, mean over its valid frames (dB)."""
    ssim: list[float]
    lpips: list[float] | None
    """``None`` when no LPIPS weights are configured (absent, not 0)."""
    psnr_frames: list[list[float]]
    """Per clip, per valid frame (dB)."""


def _to01(x: Tensor) -> Tensor:
    return ((x.float().clamp(-1, 1) + 1) / 2)


def frame_psnr(x: Tensor, y: Tensor) -> Tensor:
    """(N, C, H, W) pairs in [-1, 1] -> (N,) PSNR in dB with data range 1 on [0, 1] images."""
    # imported here: torchmetrics pulls in scipy and matplotlib (~0.8 s), which every `pvq` command
    # would otherwise pay at start-up
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(_to01(y), _to01(x), data_range=1.0, reduction="none", dim=(1, 2, 3))


SSIM_SIGMA = 1.5
SSIM_ROWS = 64
"""Output rows of the SSIM map computed at once (:func:`frame_ssim`)."""


def _ssim_kernel(channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """torchmetrics' Gaussian window for sigma 1.5: 11 x 11, the outer product of a 1D Gaussian."""
    size = int(3.5 * SSIM_SIGMA + 0.5) * 2 + 1
    d = torch.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=dtype, device=device)
    g = torch.exp(-torch.pow(d / SSIM_SIGMA, 2) / 2)
    g = (g / g.sum()).unsqueeze(0)
    return torch.matmul(g.t(), g).expand(channels, 1, size, size)


def frame_ssim(x: Tensor, y: Tensor, rows: int = SSIM_ROWS) -> Tensor:
    """(N, C, H, W) pairs in [-1, 1] -> (N,) SSIM (Gaussian window 11, sigma 1.5, data range 1 on
    [0, 1] images, reflect padding): the numbers of torchmetrics' ``structural_similarity_index_measure``.

    The SSIM map is computed ``rows`` output rows at a time, each strip from its rows of the
    reflect-padded images plus the window's radius above and below, and summed in float64. The
    result does not depend on ``rows`` beyond float rounding; memory does: torchmetrics on one 4K
    frame peaks at ~6 GB of temporaries (10 full-size maps and a 121-tap grouped convolution),
    a strip of 64 rows of it at ~0.2 GB."""
    p, t = _to01(y), _to01(x)
    n, c, h, w = p.shape
    kernel = _ssim_kernel(c, p.dtype, p.device)
    r = (kernel.shape[-1] - 1) // 2
    if h <= r or w <= r:
        raise ValueError(f"SSIM needs frames larger than {r} x {r} (reflect padding), got {h} x {w}")
    c1, c2 = 0.01**2, 0.03**2
    total = torch.zeros(n, dtype=torch.float64, device=p.device)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        idx = torch.arange(r0 - r, r1 + r, device=p.device).abs()  # reflect above the first row
        idx = torch.where(idx > h - 1, 2 * (h - 1) - idx, idx)  # and below the last
        ps = F.pad(p.index_select(2, idx), (r, r, 0, 0), mode="reflect")
        ts = F.pad(t.index_select(2, idx), (r, r, 0, 0), mode="reflect")
        out = F.conv2d(torch.cat((ps, ts, ps * ps, ts * ts, ps * ts)), kernel, groups=c).split(n)
        mu_pp, mu_tt, mu_pt = out[0].pow(2), out[1].pow(2), out[0] * out[1]
        var_p = torch.clamp(out[2] - mu_pp, min=0.0)
        var_t = torch.clamp(out[3] - mu_tt, min=0.0)
        cov = out[4] - mu_pt
        ssim = ((2 * mu_pt + c1) * (2 * cov + c2)) / ((mu_pp + mu_tt + c1) * (var_p + var_t + c2))
        total += ssim.double().sum((1, 2, 3))
    return (total / (c * h * w)).to(p.dtype)


@torch.no_grad()
def clip_metrics(x: Tensor, recon: Tensor, mask: Tensor | None = None, lpips: LPIPS | None = None) -> ClipMetrics:
    """Metrics of reconstructions ``recon`` against originals ``x``, both (B, C, T, H, W)."""
    b, _, t = x.shape[:3]
    mask = torch.ones(b, t, dtype=torch.bool, device=x.device) if mask is None else mask.bool()
    psnr, ssim, lp, per_frame = [], [], [] if lpips is not None else None, []
    for i in range(b):
        fx, fy = frames_of(x[i:i + 1], mask[i:i + 1]), frames_of(recon[i:i + 1], mask[i:i + 1])
        p = frame_psnr(fx, fy)
        per_frame.append([float(v) for v in p])
        psnr.append(float(p.mean()))
        ssim.append(float(frame_ssim(fx, fy).mean()))
        if lpips is not None:
            lp.append(float(lpips(fx, fy).mean()))
    return ClipMetrics(psnr, ssim, lp, per_frame)
