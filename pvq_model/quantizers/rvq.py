"""RVQ (Lee et al., 2022): residual VQ, every level at the full latent size."""

from __future__ import annotations

from torch import nn

from .residual import ResidualQuantizer
from .vq import VectorQuantizer


class ResidualVQ(ResidualQuantizer):
    def __init__(self, *, dim: int, codebook_size: int, num_levels: int, commitment_weight: float = 0.25):
        super().__init__(
            levels=[VectorQuantizer(dim=dim, codebook_size=codebook_size, commitment_weight=commitment_weight,
                                    init_seed=k) for k in range(num_levels)],
            scales=[1.0] * num_levels,
            fusions=[nn.Identity() for _ in range(num_levels)],
            commitment_weight=commitment_weight,
        )
