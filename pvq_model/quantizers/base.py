"""The shared return type and base class of every quantizer.

All quantizers take a channel-first latent ``z`` of shape (B, D, t, h, w), compute in fp32 (outside
bf16 autocast: distances and entropies are precision-sensitive) and return a
:class:`QuantizerOutput`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


class QuantizerOutput(NamedTuple):
    quantized: Tensor
    """(B, D, t, h, w) quantized latent with straight-through gradients to ``z``."""
    indices: Any
    """Token ids: (B, t, h, w) int64 for single-level quantizers, a list with one (B, t_k, h_k, w_k)
    tensor per level for residual and pyramidal ones. ``decode_indices(indices) == quantized``."""
    aux_loss: Tensor
    """Scalar fp32: commitment / codebook / entropy / KL terms, already weighted."""
    stats: dict[str, Tensor]
    """Detached scalars for logging: ``usage`` (fraction of codes used in the batch), ``perplexity``
    and, for multi-level quantizers, the same per level plus the relative residual per level."""


def fp32(device_type: str):
    """Context that disables autocast so quantizer maths runs in fp32."""
    if device_type in ("cuda", "cpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


@torch.no_grad()
def code_stats(indices: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """Codebook usage (fraction of the codebook hit by ``indices``) and perplexity exp(H(hist))."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum()
    return {
        "usage": (counts > 0).float().mean(),
        "perplexity": torch.exp(entropy),
    }


class Quantizer(nn.Module):
    """Base class: ``forward(z) -> QuantizerOutput`` and ``decode_indices(indices) -> (B, D, t, h, w)``."""

    dim: int
    codebook_size: int

    def forward(self, z: Tensor) -> QuantizerOutput:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must implement forward")

    def decode_indices(self, indices: Any) -> Tensor:  # pragma: no cover - interface
        raise TypeError(f"{type(self).__name__} must implement decode_indices")

    @torch.no_grad()
    def data_init(self, z: Tensor) -> None:
        """Initialise data-dependent state (codebooks, level gains) from a first batch ``z``.

        Call it once before training (the trainer does, on rank 0's batch broadcast to all ranks);
        it is a no-op for quantizers without such state.
        """
