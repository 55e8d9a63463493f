"""VQ (van den Oord et al., 2017): nearest codebook entry with a straight-through estimator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..config import QuantizerConfig
from .base import Quantizer, QuantizerOutput, code_stats, fp32


def nearest_code(flat: Tensor, codebook: Tensor, chunk: int = 8192) -> Tensor:
    """Index of the nearest codebook row (squared L2) for each row of ``flat`` (N, D); chunked over
    N so the (N, K) distance matrix never exceeds ``chunk`` x K floats."""
    cb_sq = (codebook * codebook).sum(1)  # (K,)
    out = []
    for part in flat.split(chunk):
        dist = cb_sq[None, :] - 2.0 * part @ codebook.t()  # (n, K); |x|^2 is constant per row
        out.append(dist.argmin(1))
    return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.long)


class VectorQuantizer(Quantizer):
    """Plain VQ with codebook loss ``|sg(z) - e|^2`` and commitment ``beta |z - sg(e)|^2``."""

    type_name, label = "vq", "VQ"

    @classmethod
    def from_config(cls, cfg: QuantizerConfig) -> VectorQuantizer:
        return cls(dim=cfg.dim, codebook_size=cfg.codebook_size, commitment_weight=cfg.commitment_weight)

    def __init__(self, *, dim: int, codebook_size: int, commitment_weight: float = 0.25, init_seed: int = 0):
        super().__init__()
        self.dim, self.codebook_size, self.commitment_weight = dim, codebook_size, commitment_weight
        self.init_seed = init_seed  # residual levels use different seeds: see data_init
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim) / dim**0.5)

    def forward(self, z: Tensor) -> QuantizerOutput:
        with fp32(z.device.type):
            z = z.float()
            b, _, t, h, w = z.shape
            flat = rearrange(z, "b d t h w -> (b t h w) d")
            idx = nearest_code(flat.detach(), self.codebook.float())
            q = self.codebook.float()[idx]
            loss = F.mse_loss(q, flat.detach()) + self.commitment_weight * F.mse_loss(flat, q.detach())
            q = flat + (q - flat).detach()
            quantized = rearrange(q, "(b t h w) d -> b d t h w", b=b, t=t, h=h, w=w)
            indices = idx.view(b, t, h, w)
        return QuantizerOutput(quantized, indices, loss, code_stats(indices, self.codebook_size))

    def decode_indices(self, indices: Tensor) -> Tensor:
        return rearrange(self.codebook.float()[indices], "b t h w d -> b d t h w")

    @torch.no_grad()
    def data_init(self, z: Tensor) -> None:
        """Codebook <- a random sample of the batch's latent vectors, drawn with ``init_seed``
        (repeated with small noise when the batch has fewer vectors than codes). Deterministic: the
        same ``z`` gives the same codebook, and ``data_init(z / s)`` gives that codebook / s.
        Residual levels need distinct seeds: a level sampled at the positions the previous level
        copied exactly would only see zero residuals."""
        flat = rearrange(z.float(), "b d t h w -> (b t h w) d")
        gen = torch.Generator(device="cpu").manual_seed(self.init_seed)
        pick = torch.randint(0, flat.shape[0], (self.codebook_size,), generator=gen)
        noise = torch.randn(self.codebook_size, self.dim, generator=gen).to(flat)
        scale = flat.std().clamp_min(1e-6) * 1e-2
        init = flat[pick.to(flat.device)]
        repeated = torch.arange(self.codebook_size) >= flat.shape[0]
        init = init + noise * scale * repeated.to(flat)[:, None]
        self.codebook.data.copy_(init.to(self.codebook))
