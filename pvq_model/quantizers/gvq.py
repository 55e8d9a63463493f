"""GVQ: Gumbel-softmax vector quantization (Jang et al., 2016).

Each latent vector is projected to logits over the codebook; training samples a hard one-hot with
``F.gumbel_softmax(hard=True)`` (straight-through), evaluation takes the argmax. A KL term to the
uniform prior keeps the code distribution spread.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

from ..blocks import Conv3d
from ..config import QuantizerConfig
from .base import Quantizer, QuantizerOutput, code_stats, fp32


class GumbelQuantizer(Quantizer):
    type_name, label = "gvq", "GVQ"

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> GumbelQuantizer:
        return cls(dim=cfg.dim, codebook_size=cfg.codebook_size, temperature=cfg.gumbel_temperature,
                   kl_weight=cfg.gumbel_kl_weight)

    def __init__(self, *, dim: int, codebook_size: int, temperature: float = 1.0, kl_weight: float = 5e-4):
        super().__init__()
        self.dim, self.codebook_size = dim, codebook_size
        self.temperature, self.kl_weight = temperature, kl_weight
        self.proj = Conv3d(dim, codebook_size, 1)
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim) / dim**0.5)

    def forward(self, z: Tensor) -> QuantizerOutput:
        with fp32(z.device.type):
            logits = self.proj(z.float())  # (B, K, t, h, w), fp32 weights
            if self.training:
                onehot = F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=1)
            else:
                onehot = F.one_hot(logits.argmax(1), self.codebook_size).permute(0, 4, 1, 2, 3).float()
            indices = onehot.argmax(1)  # (B, t, h, w)
            quantized = einsum(onehot, self.codebook.float(), "b k t h w, k d -> b d t h w")
            log_probs = F.log_softmax(logits, dim=1)
            kl = (log_probs.exp() * (log_probs + math.log(self.codebook_size))).sum(1).mean()
        return QuantizerOutput(quantized, indices, self.kl_weight * kl, code_stats(indices, self.codebook_size))

    def decode_indices(self, indices: Tensor) -> Tensor:
        return rearrange(self.codebook.float()[indices], "b t h w d -> b d t h w")
