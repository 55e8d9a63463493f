"""RVQ (Lee et al., 2022): residual VQ, every level at the full latent size."""

from __future__ import annotations

from torch import nn

from ..config import QuantizerConfig
from .residual import FullSizeLevels, ResidualQuantizer
from .vq import VectorQuantizer


class ResidualVQ(FullSizeLevels, ResidualQuantizer):
    type_name, label = "rvq", "RVQ"

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> ResidualVQ:
        return cls(dim=cfg.dim, codebook_size=cfg.codebook_size, num_levels=cfg.num_levels,
                   commitment_weight=cfg.commitment_weight)

    def __init__(self, *, dim: int, codebook_size: int, num_levels: int, commitment_weight: float = 0.25):
        super().__init__(
            levels=[VectorQuantizer(dim=dim, codebook_size=codebook_size, commitment_weight=commitment_weight,
                                    init_seed=k) for k in range(num_levels)],
            scales=[1.0] * num_levels,
            fusions=[nn.Identity() for _ in range(num_levels)],
            commitment_weight=commitment_weight,
        )
