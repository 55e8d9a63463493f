"""PVQ-VAE decoder: 3 up-sampling blocks, then a projection to pixels by depth-to-space."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .blocks import ChannelNorm, Checkpointed, ResBlock3d, UpBlock, conv3
from .config import ModelConfig


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.decoder
        ch = d.channels
        self.patch = tuple(d.out_patch)
        self.conv_in = conv3(cfg.latent_dim, ch[0])
        self.mid = Checkpointed(ResBlock3d(ch[0], ch[0]))
        cins = [ch[0]] + ch[:-1]
        self.blocks = nn.ModuleList(
            Checkpointed(UpBlock(cin, cout, temporal=t, num_res=d.num_res_blocks))
            for cin, cout, t in zip(cins, ch, d.temporal_upsample))
        self.norm_out = ChannelNorm(ch[-1])
        pt, ph, pw = self.patch
        self.proj_out = conv3(ch[-1], cfg.in_channels * pt * ph * pw)

    def forward(self, z: Tensor) -> Tensor:
        """``z`` (B, D, t, h, w) -> (B, C, 16 t, 32 h, 32 w)."""
        h = self.mid(self.conv_in(z))
        for block in self.blocks:
            h = block(h)
        h = self.proj_out(F.silu(self.norm_out(h)))
        pt, ph, pw = self.patch
        return rearrange(h, "b (c pt ph pw) t h w -> b c (t pt) (h ph) (w pw)", pt=pt, ph=ph, pw=pw)
