"""Quantizers of the paper's Table 1, one file each, and their one registry.

Each quantizer class owns its ``quantizer.type`` name, its table label, how it is built from the
config's ``quantizer`` section (:meth:`~.base.Quantizer.from_config`), the checks of the fields it
uses (:meth:`~.base.Quantizer.check_config`) and its token grid
(:meth:`~.base.Quantizer.token_grids`). :data:`QUANTIZERS` lists them; :func:`build_quantizer` and
the config's validation of ``quantizer.type`` go through it, so a new variant is a new file plus
one entry here.
"""

from __future__ import annotations

from ..config import ConfigError, QuantizerConfig
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
    "ResidualVQ", "ResidualLFQ", "PyramidVQ", "PyramidLFQ", "IdentityQuantizer", "QUANTIZERS",
    "TABLE1_TYPES", "quantizer_class", "build_quantizer",
]

QUANTIZERS: dict[str, type[Quantizer]] = {q.type_name: q for q in (
    VectorQuantizer, GumbelQuantizer, LookupFreeQuantizer, ResidualVQ, PyramidVQ, ResidualLFQ, PyramidLFQ,
    IdentityQuantizer,
)}
"""Every quantizer by ``quantizer.type``, in the row order of the paper's Table 1 (then ``identity``)."""

TABLE1_TYPES: tuple[str, ...] = tuple(name for name, q in QUANTIZERS.items() if q.in_table1)
"""The ``quantizer.type`` of each row of Table 1: vq, gvq, lfq, rvq, psvq, rvq_lfq, pvq."""


def quantizer_class(type_name: str) -> type[Quantizer]:
    """The class registered as ``type_name``; :class:`ConfigError` naming the known ones otherwise."""
    try:
        return QUANTIZERS[type_name]
    except KeyError:
        raise ConfigError(f"quantizer.type: {type_name!r} is not one of {', '.join(QUANTIZERS)}") from None


def build_quantizer(cfg: QuantizerConfig) -> Quantizer:
    """The quantizer the ``quantizer`` section names, built from the fields it uses."""
    return quantizer_class(cfg.type).from_config(cfg)
