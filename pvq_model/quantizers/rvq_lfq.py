"""RVQ+LFQ: residual quantization with lookup-free (sign) levels, every level at full size."""

from __future__ import annotations

from torch import nn

from .lfq import LookupFreeQuantizer
from .residual import ResidualQuantizer


class ResidualLFQ(ResidualQuantizer):
    def __init__(self, *, dim: int, num_levels: int, commitment_weight: float = 0.25, **lfq_kwargs):
        super().__init__(
            levels=[LookupFreeQuantizer(dim=dim, commitment_weight=commitment_weight, **lfq_kwargs)
                    for _ in range(num_levels)],
            scales=[1.0] * num_levels,
            fusions=[nn.Identity() for _ in range(num_levels)],
            commitment_weight=commitment_weight,
        )
