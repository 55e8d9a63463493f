"""PVQ, the paper's default: pyramidal multi-scale residual quantization with lookup-free (LFQ)
tokens and pyramidal token fusion.

Coarse levels quantize an area-pooled residual (global structure, few tokens), finer levels what
is left (detail); each level's binary tokens are scaled by a learned gain, brought back to full
size and fused by a per-level convolutional mix before being summed. See
:mod:`pvq_model.quantizers.residual` for the loop.
"""

from __future__ import annotations

from .lfq import LookupFreeQuantizer
from .residual import ConvFusion, ResidualQuantizer


class PyramidLFQ(ResidualQuantizer):
    def __init__(self, *, dim: int, scales: list[float], fusion_mix: float = 0.5,
                 commitment_weight: float = 0.25, **lfq_kwargs):
        super().__init__(
            levels=[LookupFreeQuantizer(dim=dim, commitment_weight=commitment_weight, **lfq_kwargs)
                    for _ in scales],
            scales=scales,
            fusions=[ConvFusion(dim, fusion_mix) for _ in scales],
            commitment_weight=commitment_weight,
        )
