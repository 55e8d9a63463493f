"""PSVQ: the pyramidal multi-scale residual quantizer of PVQ with VQ codebooks instead of LFQ
(the paper's Table-1 ablation "replacing LFQ with standard VQ in our PVQ framework")."""

from __future__ import annotations

from ..config import QuantizerConfig
from .residual import ConvFusion, PyramidLevels, ResidualQuantizer
from .vq import VectorQuantizer


class PyramidVQ(PyramidLevels, ResidualQuantizer):
    type_name, label = "psvq", "PSVQ"

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> PyramidVQ:
        return cls(dim=cfg.dim, codebook_size=cfg.codebook_size, scales=cfg.pyramid_scales,
                   fusion_mix=cfg.fusion_mix, commitment_weight=cfg.commitment_weight)

    @classmethod
    def check_config(cls, cfg: QuantizerConfig) -> None:
        cls.check_pyramid(cfg)

    def __init__(self, *, dim: int, codebook_size: int, scales: list[float], fusion_mix: float = 0.5,
                 commitment_weight: float = 0.25):
        super().__init__(
            levels=[VectorQuantizer(dim=dim, codebook_size=codebook_size, commitment_weight=commitment_weight,
                                    init_seed=k) for k in range(len(scales))],
            scales=scales,
            fusions=[ConvFusion(dim, fusion_mix) for _ in scales],
            commitment_weight=commitment_weight,
        )
