"""Identity bottleneck: the continuous latent passes through unchanged (a diagnostic, not a row of
the paper's Table 1).

It answers "how well can this encoder/decoder reconstruct through a latent of this size at all?":
the loss of a run with ``quantizer.type: identity`` is the upper bound for every quantizer at the
same latent grid and width, so a quantizer's loss can be read as a gap to it
(docs/training_dynamics.md). Its "tokens" are the latent itself: ``decode_indices(indices)``
returns them, and it has no codebook, so it reports no usage or perplexity.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import QuantizerConfig
from .base import Grid, Quantizer, QuantizerOutput, fp32


class IdentityQuantizer(Quantizer):
    type_name, label, in_table1 = "identity", "Identity", False

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> IdentityQuantizer:
        return cls(dim=cfg.dim)

    @classmethod
    def token_grids(cls, cfg: QuantizerConfig, full: Grid) -> None:
        """None: the latent is continuous, there are no tokens."""
        return None

    def __init__(self, *, dim: int):
        super().__init__()
        self.dim, self.codebook_size = dim, 0

    def forward(self, z: Tensor) -> QuantizerOutput:
        with fp32(z.device.type):
            z = z.float()
            return QuantizerOutput(z, z.detach(), z.new_zeros(()), {})

    def decode_indices(self, indices: Tensor) -> Tensor:
        """The (B, D, t, h, w) latent itself."""
        return indices.float()
