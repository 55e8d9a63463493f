"""Reconstruction metrics: PSNR and SSIM (torchmetrics) and LPIPS (optional, see perceptual.py).

Clips are (B, C, T, H, W) in [-1, 1]; ``mask`` (B, T) marks valid frames (images are clips padded
with zero frames). Metrics are computed per frame on [0, 1] images and averaged over valid frames:
the clip PSNR is the mean of its frames' PSNR. SSIM folds time into the batch (torchmetrics does
a 3D SSIM on 5D input, which is not the paper's metric and fails below 11 frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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


def frame_ssim(x: Tensor, y: Tensor) -> Tensor:
    """(N, C, H, W) pairs in [-1, 1] -> (N,) SSIM (Gaussian window 11, sigma 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(_to01(y), _to01(x), data_range=1.0, reduction="none")


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
