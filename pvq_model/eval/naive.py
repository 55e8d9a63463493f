"""Information-equivalent baselines: what a model must beat to have learned anything.

* :func:`mean_colour` — one flat frame per clip, its mean colour over the valid frames (3 numbers
  per clip).
* :func:`pooled` — the clip average-pooled over the latent grid's blocks (ft x fh x fw pixels, the
  model's compression) and trilinearly upsampled back: 3 continuous numbers per latent position,
  where the model has ``latent_dim`` (quantized) ones.

Both take and return (B, C, T, H, W) clips in [-1, 1]; ``mask`` (B, T) marks the valid frames
(padded frames of images are ignored and come back as they were).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _mask(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
    return mask.bool()


@torch.no_grad()
def mean_colour(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """(B, C, T, H, W) -> the same shape, every valid frame the clip's mean colour."""
    m = _mask(x, mask).float()[:, None, :, None, None]  # (B, 1, T, 1, 1)
    denom = (m.sum((2, 3, 4), keepdim=True) * x.shape[3] * x.shape[4]).clamp_min(1.0)
    mean = (x.float() * m).sum((2, 3, 4), keepdim=True) / denom  # (B, C, 1, 1, 1)
    return torch.where(m.bool(), mean.expand_as(x), x.float()).to(x.dtype)


@torch.no_grad()
def pooled(x: Tensor, factor: tuple[int, int, int], mask: Tensor | None = None) -> Tensor:
    """(B, C, T, H, W) -> average over ``factor`` = (ft, fh, fw) blocks, trilinearly upsampled.

    Only valid frames enter the averages (a one-frame image is pooled spatially only); sizes that are
    not multiples of the factor are padded by edge replication, as the model pads them."""
    m = _mask(x, mask)
    out = x.float().clone()
    ft, fh, fw = factor
    for i in range(x.shape[0]):
        n = int(m[i].sum())
        clip = x[i:i + 1, :, :n].float()  # valid frames lead (loader and evaluation layout)
        t, h, w = clip.shape[2:]
        kt = min(ft, t)
        pad = (0, (-w) % fw, 0, (-h) % fh, 0, (-t) % kt)
        padded = F.pad(clip, pad, mode="replicate") if any(pad) else clip
        low = F.avg_pool3d(padded, (kt, fh, fw))
        up = F.interpolate(low, size=padded.shape[2:], mode="trilinear", align_corners=False)
        out[i:i + 1, :, :n] = up[:, :, :t, :h, :w]
    return out.to(x.dtype)
