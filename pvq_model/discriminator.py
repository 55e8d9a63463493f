"""Spatio-temporal discriminator (supplementary Fig. 4): stages of 3D conv, BatchNorm3d, SiLU and
max-pooling, then global pooling to a compact embedding and a linear real/fake head."""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import Conv3d
from .config import DiscriminatorConfig


class Discriminator3D(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(cfg.channels):
            layers += [
                Conv3d(cin, cout, 3, padding=1),
                nn.BatchNorm3d(cout),
                nn.SiLU(),
                # keep time at first (clips may have 16 frames only), then pool it too
                nn.MaxPool3d((1 if i == 0 else 2, 2, 2), ceil_mode=True),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(cin, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, C, T, H, W) in [-1, 1] -> (B,) real/fake logits."""
        h = self.pool(self.features(x)).flatten(1)  # (B, C_last)
        return self.head(h).squeeze(1)
