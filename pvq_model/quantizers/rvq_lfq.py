"""RVQ+LFQ: residual quantization with lookup-free (sign) levels, every level at full size."""

from __future__ import annotations

from torch import nn

from ..config import QuantizerConfig
from .lfq import LookupFreeQuantizer, check_lfq_config, lfq_config_kwargs
from .residual import FullSizeLevels, ResidualQuantizer


class ResidualLFQ(FullSizeLevels, ResidualQuantizer):
    type_name, label = "rvq_lfq", "RVQ + LFQ"

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> ResidualLFQ:
        return cls(dim=cfg.dim, num_levels=cfg.num_levels, **lfq_config_kwargs(cfg))

    @classmethod
    def check_config(cls, cfg: QuantizerConfig) -> None:
        check_lfq_config(cfg)

    def __init__(self, *, dim: int, num_levels: int, commitment_weight: float = 0.25, **lfq_kwargs):
        super().__init__(
            levels=[LookupFreeQuantizer(dim=dim, commitment_weight=commitment_weight, **lfq_kwargs)
                    for _ in range(num_levels)],
            scales=[1.0] * num_levels,
            fusions=[nn.Identity() for _ in range(num_levels)],
            commitment_weight=commitment_weight,
        )
