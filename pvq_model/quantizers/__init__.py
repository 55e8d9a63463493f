"""Quantizers of the paper's Table 1; :func:`build_quantizer` is the only switch between them."""

from __future__ import annotations

from ..config import QuantizerConfig
from .base import Quantizer, QuantizerOutput
from .gvq import GumbelQuantizer
from .identity import IdentityQuantizer
from .lfq import LookupFreeQuantizer
from .psvq import PyramidVQ
from .pvq import PyramidLFQ
from .rvq import ResidualVQ
from .rvq_lfq import ResidualLFQ
from .vq import VectorQuantizer

__all__ = [
    "Quantizer", "QuantizerOutput", "VectorQuantizer", "GumbelQuantizer", "LookupFreeQuantizer",
    "ResidualVQ", "ResidualLFQ", "PyramidVQ", "PyramidLFQ", "IdentityQuantizer", "build_quantizer",
]


def build_quantizer(cfg: QuantizerConfig) -> Quantizer:
    lfq = dict(entropy_weight=cfg.entropy_weight, diversity_weight=cfg.diversity_weight,
               temperature=cfg.entropy_temperature, group_bits=cfg.entropy_group_bits)
    beta = cfg.commitment_weight
    builders = {
        "vq": lambda: VectorQuantizer(dim=cfg.dim, codebook_size=cfg.codebook_size, commitment_weight=beta),
        "gvq": lambda: GumbelQuantizer(dim=cfg.dim, codebook_size=cfg.codebook_size,
                                       temperature=cfg.gumbel_temperature, kl_weight=cfg.gumbel_kl_weight),
        "lfq": lambda: LookupFreeQuantizer(dim=cfg.dim, commitment_weight=beta, **lfq),
        "rvq": lambda: ResidualVQ(dim=cfg.dim, codebook_size=cfg.codebook_size,
                                  num_levels=cfg.num_levels, commitment_weight=beta),
        "rvq_lfq": lambda: ResidualLFQ(dim=cfg.dim, num_levels=cfg.num_levels, commitment_weight=beta, **lfq),
        "psvq": lambda: PyramidVQ(dim=cfg.dim, codebook_size=cfg.codebook_size, scales=cfg.pyramid_scales,
                                  fusion_mix=cfg.fusion_mix, commitment_weight=beta),
        "pvq": lambda: PyramidLFQ(dim=cfg.dim, scales=cfg.pyramid_scales, fusion_mix=cfg.fusion_mix,
                                  commitment_weight=beta, **lfq),
        "identity": lambda: IdentityQuantizer(dim=cfg.dim),
    }
    if cfg.type not in builders:
        raise ValueError(f"quantizer.type: unknown {cfg.type!r}; one of {', '.join(builders)}")
    return builders[cfg.type]()
