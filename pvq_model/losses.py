"""Training losses of PVQ-VAE, reduced in fp32.

Generator: ``recon_weight * L1/L2 (valid frames) + perceptual_weight * LPIPS + quantizer_weight *
quantizer aux + adversarial_weight * G-loss (from adversarial_start_step) + alignment.weight *
InfoNCE to the 2D VAE teacher``. Discriminator: hinge or non-saturating loss on real vs.
reconstructed clips. Each term is returned separately for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .alignment import alignment_loss
from .config import PVQConfig
from .perceptual import LPIPS, lpips_video
from .vae import VAEOutput


def masked_recon(x: Tensor, recon: Tensor, mask: Tensor, kind: str = "l1") -> Tensor:
    """Mean |x - recon| (or squared) over valid frames only; x, recon (B, C, T, H, W), mask (B, T)."""
    diff = (recon.float() - x.float())
    diff = diff.abs() if kind == "l1" else diff.pow(2)
    m = mask.float()[:, None, :, None, None]
    denom = m.sum() * x.shape[1] * x.shape[3] * x.shape[4]
    return (diff * m).sum() / denom.clamp_min(1.0)


class PVQLoss(nn.Module):
    def __init__(self, cfg: PVQConfig, lpips: LPIPS | None = None, teacher=None):
        super().__init__()
        if cfg.loss.recon_type not in ("l1", "l2"):
            raise ValueError(f"loss.recon_type: {cfg.loss.recon_type!r} is not l1 or l2")
        if cfg.loss.adversarial_type not in ("hinge", "non_saturating"):
            raise ValueError(f"loss.adversarial_type: {cfg.loss.adversarial_type!r} is not hinge or non_saturating")
        self.cfg = cfg
        self.lpips = lpips
        self.teacher = teacher

    def adversarial_active(self, step: int) -> bool:
        return self.cfg.loss.adversarial_weight > 0 and step >= self.cfg.loss.adversarial_start_step

    def generator(self, x: Tensor, out: VAEOutput, mask: Tensor, step: int,
                  discriminator: nn.Module | None = None, heads: nn.Module | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Total generator loss and its weighted components (all fp32 scalars)."""
        lc = self.cfg.loss
        parts: dict[str, Tensor] = {"recon": masked_recon(x, out.recon, mask, lc.recon_type) * lc.recon_weight}
        parts["quantizer"] = out.quant.aux_loss.float() * lc.quantizer_weight
        if self.lpips is not None and lc.perceptual_weight > 0:
            parts["perceptual"] = lpips_video(self.lpips, x, out.recon, mask).float() * lc.perceptual_weight
        if discriminator is not None and self.adversarial_active(step):
            logits = discriminator(out.recon).float()
            g = -logits.mean() if lc.adversarial_type == "hinge" else F.softplus(-logits).mean()
            parts["adversarial"] = g * lc.adversarial_weight
        if heads is not None and self.teacher is not None and self.cfg.alignment.weight > 0:
            parts["alignment"] = alignment_loss(heads, out.frame_features, x, mask, self.teacher) * self.cfg.alignment.weight
        total = torch.stack(list(parts.values())).sum()
        return total, parts

    def discriminator(self, discriminator: nn.Module, x: Tensor, recon: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Discriminator loss on real ``x`` and detached reconstructions ``recon`` (B, C, T, H, W)."""
        real = discriminator(x).float()
        fake = discriminator(recon.detach()).float()
        if self.cfg.loss.adversarial_type == "hinge":
            loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        else:
            loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        return loss, {"d_loss": loss.detach(), "logits_real": real.mean().detach(), "logits_fake": fake.mean().detach()}
