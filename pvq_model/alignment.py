"""Contrastive alignment of frame-wise encoder features to a frozen 2D image VAE (FLUX).

For every valid frame, the encoder's first-block features (full frame rate) and the teacher's
latent of the same frame are pooled to a ``grid x grid`` layout and projected to ``proj_dim``;
an InfoNCE loss makes each student token pick the teacher token of the same frame and position
among all tokens of the batch (symmetric cross-entropy, temperature ``tau``).

The teacher is any diffusers ``AutoencoderKL`` loaded from a local directory (FLUX.1's ``vae``
folder in production; a tiny random one in tests); it is frozen and never part of the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import AlignmentConfig


class AlignmentHeads(nn.Module):
    """Trainable projections of student features and teacher latents into a shared space."""

    def __init__(self, student_channels: int, cfg: AlignmentConfig):
        super().__init__()
        self.cfg = cfg
        self.student = nn.Conv2d(student_channels, cfg.proj_dim, 1)
        self.teacher = nn.Conv2d(cfg.teacher_channels, cfg.proj_dim, 1)


def load_teacher(path: str | Path, device: str | torch.device = "cpu"):
    """Load a frozen diffusers AutoencoderKL from a local directory (no network)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"alignment.teacher_path: {path} has no config.json; expected a local diffusers "
            "AutoencoderKL directory (e.g. FLUX.1-dev/vae)")
    vae = AutoencoderKL.from_pretrained(path, local_files_only=True).to(device).eval()
    vae.requires_grad_(False)
    return vae


@torch.no_grad()
def teacher_latents(teacher, frames: Tensor) -> Tensor:
    """(N, 3, H, W) frames in [-1, 1] -> (N, c, H/8, W/8) posterior means of the teacher."""
    dtype = next(teacher.parameters()).dtype
    return teacher.encode(frames.to(dtype)).latent_dist.mean.float()


def alignment_loss(heads: AlignmentHeads, frame_features: Tensor, frames: Tensor, mask: Tensor,
                   teacher) -> Tensor:
    """InfoNCE between student and teacher tokens of the valid frames.

    frame_features: (B, C0, T, H/2, W/2) encoder features; frames: (B, 3, T, H, W) input clip;
    mask: (B, T) bool, valid frames. Returns a scalar fp32 loss.
    """
    cfg = heads.cfg
    g = cfg.grid
    valid = mask.reshape(-1)
    feats = rearrange(frame_features, "b c t h w -> (b t) c h w")[valid]
    student = heads.student(F.adaptive_avg_pool2d(feats, g).float())  # (N, P, g, g)
    pix = rearrange(frames, "b c t h w -> (b t) c h w")[valid]
    target = F.adaptive_avg_pool2d(teacher_latents(teacher, pix), g)
    teach = heads.teacher(target)  # (N, P, g, g)
    s = F.normalize(rearrange(student, "n p h w -> (n h w) p"), dim=1)
    t = F.normalize(rearrange(teach, "n p h w -> (n h w) p"), dim=1)
    if s.shape[0] > cfg.max_tokens:
        keep = torch.randperm(s.shape[0], device=s.device)[: cfg.max_tokens]
        s, t = s[keep], t[keep]
    logits = s @ t.t() / cfg.temperature
    labels = torch.arange(s.shape[0], device=s.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
