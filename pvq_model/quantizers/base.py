"""The shared return type and base class of every quantizer.

All quantizers take a channel-first latent ``z`` of shape (B, D, t, h, w), compute in fp32 (outside
bf16 autocast: distances and entropies are precision-sensitive) and return a
:class:`QuantizerOutput`. Each one also carries what the rest of the project knows about it: its
``quantizer.type`` name, its label in tables, how it is built from and checked against the config,
and its token grid (:class:`Quantizer`); :mod:`pvq_model.quantizers` collects them in one registry.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..config import QuantizerConfig

Grid = tuple[int, int, int]


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
    """Base class: ``forward(z) -> QuantizerOutput`` and ``decode_indices(indices) -> (B, D, t, h, w)``.

    A subclass that a config can name sets :attr:`type_name` and :attr:`label` and implements
    :meth:`from_config`; :meth:`check_config` and :meth:`token_grids` have single-level defaults.
    """

    type_name: ClassVar[str]
    """The config's ``quantizer.type`` that selects it ("rvq_lfq")."""
    label: ClassVar[str]
    """Its name in tables and reports, as the paper's Table 1 writes it ("RVQ + LFQ")."""
    in_table1: ClassVar[bool] = True
    """Whether it is a row of the paper's Table 1 (``identity`` is a diagnostic, not a row)."""
    dim: int
    codebook_size: int

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> Quantizer:  # pragma: no cover - interface
        """Build it from the ``quantizer`` section; reads only the fields this type uses."""
        raise TypeError(f"{cls.__name__} cannot be built from a config")

    @classmethod
    def check_config(cls, cfg: QuantizerConfig) -> None:
        """Checks of the ``quantizer`` fields this type uses; raises ``ConfigError`` naming the key."""

    @classmethod
    def token_grids(cls, cfg: QuantizerConfig, full: Grid) -> list[Grid] | None:
        """(t, h, w) token grid of every level, coarsest first, for a latent grid ``full``; None for a
        continuous bottleneck. Default: one token per latent position."""
        return [full]

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
