"""LFQ: lookup-free quantization (Yu et al., 2023, MAGVIT-v2).

Each of the D latent channels is binarised to -1/+1 independently, so the implicit codebook is the
2**D corners of the hypercube and the token id is the bit pattern (channel i = bit i, +1 = 1).

The entropy loss (per-sample entropy minus batch entropy of the soft code assignment) is the cost
trap: done naively it builds a (tokens x 2**D) matrix, 65,536 columns for the paper's D = 16.
Because the soft assignment ``p(c | z) = softmax_c(2 <z, c> / tau)`` factorises over bits,

* the per-sample entropy is exactly the sum of D binary entropies (no enumeration), and
* the batch entropy H(E[p]) is computed exactly inside groups of ``group_bits`` bits (2**g codes
  each) and summed over groups. With ``group_bits == D`` this is the exact formula; with smaller
  groups it is the sum of the group marginals' entropies, an upper bound of the joint entropy
  that is maximal (= D log 2) exactly when the joint is uniform, so it drives the same optimum.

Cost per token: O(D) + O(D / g * 2**g * g); for D = 16, g = 8 that is 2 x 256 columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..config import ConfigError, QuantizerConfig
from .base import Quantizer, QuantizerOutput, code_stats, fp32


def _bit_matrix(bits: int, device: torch.device) -> Tensor:
    """(2**bits, bits) float matrix of the binary digits of 0..2**bits-1 (bit i = column i)."""
    codes = torch.arange(2**bits, device=device)
    return ((codes[:, None] >> torch.arange(bits, device=device)[None, :]) & 1).float()


def lfq_entropy(flat: Tensor, temperature: float, group_bits: int) -> tuple[Tensor, Tensor]:
    """Factorised LFQ entropies of the soft code assignment of ``flat`` (N, D).

    Returns ``(per_sample, batch)``: the mean per-token entropy and the (grouped) entropy of the
    batch-averaged assignment, in nats.
    """
    a = 4.0 * flat / temperature  # logit of bit = 1, since (2<z,c>/tau) differs by 4 z_i / tau
    logp1, logp0 = F.logsigmoid(a), F.logsigmoid(-a)
    p1 = logp1.exp()
    per_sample = -(p1 * logp1 + (1 - p1) * logp0).sum(1).mean()
    batch = flat.new_zeros(())
    for start in range(0, flat.shape[1], group_bits):
        l1, l0 = logp1[:, start:start + group_bits], logp0[:, start:start + group_bits]
        bits = _bit_matrix(l1.shape[1], flat.device)  # (G, g)
        log_p = l0.sum(1, keepdim=True) + (l1 - l0) @ bits.t()  # (N, G) log p(code in group)
        avg = log_p.exp().mean(0)
        batch = batch - (avg * avg.clamp_min(1e-12).log()).sum()
    return per_sample, batch


def lfq_entropy_naive(flat: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Reference formula enumerating all 2**D codes (only for small D: tests and checks)."""
    codes = _bit_matrix(flat.shape[1], flat.device) * 2 - 1  # (2**D, D) in {-1, +1}
    probs = torch.softmax(2.0 * flat @ codes.t() / temperature, dim=1)
    per_sample = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean()
    avg = probs.mean(0)
    return per_sample, -(avg * avg.clamp_min(1e-12).log()).sum()


def lfq_config_kwargs(cfg: QuantizerConfig) -> dict:
    """The LFQ constructor arguments of the ``quantizer`` section (entropy loss and commitment), shared
    by every quantizer with LFQ levels (lfq, rvq_lfq, pvq)."""
    return dict(entropy_weight=cfg.entropy_weight, diversity_weight=cfg.diversity_weight,
                temperature=cfg.entropy_temperature, group_bits=cfg.entropy_group_bits,
                commitment_weight=cfg.commitment_weight)


def check_lfq_config(cfg: QuantizerConfig) -> None:
    """A lookup-free code has exactly 2**dim entries, and its entropy groups fit in ``dim``."""
    if cfg.codebook_size != 2 ** cfg.dim:
        raise ConfigError(
            f"quantizer.codebook_size: a lookup-free quantizer with dim {cfg.dim} has 2**{cfg.dim} = "
            f"{2 ** cfg.dim} codes, not {cfg.codebook_size}")
    if not 1 <= cfg.entropy_group_bits <= min(cfg.dim, 16):
        raise ConfigError("quantizer.entropy_group_bits: between 1 and min(dim, 16)")


class LookupFreeQuantizer(Quantizer):
    type_name, label = "lfq", "LFQ"

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> LookupFreeQuantizer:
        return cls(dim=cfg.dim, **lfq_config_kwargs(cfg))

    @classmethod
    def check_config(cls, cfg: QuantizerConfig) -> None:
        check_lfq_config(cfg)

    def __init__(
        self,
        *,
        dim: int,
        entropy_weight: float = 0.1,
        diversity_weight: float = 1.0,
        temperature: float = 0.01,
        group_bits: int = 8,
        commitment_weight: float = 0.25,
    ):
        super().__init__()
        if dim > 62:
            raise ValueError(f"LFQ dim {dim}: token ids are int64, at most 62 bits")
        self.dim, self.codebook_size = dim, 2**dim
        self.entropy_weight, self.diversity_weight = entropy_weight, diversity_weight
        self.temperature, self.group_bits, self.commitment_weight = temperature, group_bits, commitment_weight
        self.register_buffer("bit_values", 2 ** torch.arange(dim), persistent=False)

    def forward(self, z: Tensor) -> QuantizerOutput:
        with fp32(z.device.type):
            z = z.float()
            codes = torch.where(z > 0, 1.0, -1.0)
            quantized = z + (codes - z).detach()
            indices = ((codes > 0).long() * self.bit_values.view(1, -1, 1, 1, 1)).sum(1)  # (B, t, h, w)
            loss = self.commitment_weight * F.mse_loss(z, codes)
            if self.training and self.entropy_weight > 0:
                flat = rearrange(z, "b d t h w -> (b t h w) d")
                per_sample, batch = lfq_entropy(flat, self.temperature, self.group_bits)
                loss = loss + self.entropy_weight * (per_sample - self.diversity_weight * batch)
        return QuantizerOutput(quantized, indices, loss, code_stats(indices, self.codebook_size))

    def decode_indices(self, indices: Tensor) -> Tensor:
        bits = (indices.unsqueeze(1) // self.bit_values.view(1, -1, 1, 1, 1)) % 2  # (B, D, t, h, w)
        return bits.float() * 2 - 1
