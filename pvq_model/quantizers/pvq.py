"""PVQ, the paper's default: pyramidal multi-scale residual quantization with lookup-free (LFQ)
tokens and pyramidal token fusion.

Coarse levels quantize an area-pooled residual (global structure, few tokens), finer levels what
is left (detail); each level's binary tokens are scaled by a learned gain, brought back to full
size and fused by a per-level convolutional mix before being summed. See
:mod:`pvq_model.quantizers.residual` for the loop.
"""

from __future__ import annotations

from ..config import QuantizerConfig
from .lfq import LookupFreeQuantizer, check_lfq_config, lfq_config_kwargs
from .residual import ConvFusion, PyramidLevels, ResidualQuantizer


class PyramidLFQ(PyramidLevels, ResidualQuantizer):
    type_name, label = "pvq", "PVQ"

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> PyramidLFQ:
        return cls(dim=cfg.dim, scales=cfg.pyramid_scales, fusion_mix=cfg.fusion_mix, **lfq_config_kwargs(cfg))

    @classmethod
    def check_config(cls, cfg: QuantizerConfig) -> None:
        check_lfq_config(cfg)
        cls.check_pyramid(cfg)

    def __init__(self, *, dim: int, scales: list[float], fusion_mix: float = 0.5,
                 commitment_weight: float = 0.25, **lfq_kwargs):
        super().__init__(
            levels=[LookupFreeQuantizer(dim=dim, commitment_weight=commitment_weight, **lfq_kwargs)
                    for _ in scales],
            scales=scales,
            fusions=[ConvFusion(dim, fusion_mix) for _ in scales],
            commitment_weight=commitment_weight,
        )
