"""PVQ-VAE decoder: 3 up-sampling blocks, then a projection to pixels by depth-to-space."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Checkpointed, ResBlock3d, UpBlock, channel_resize, conv3, depth_to_space, make_norm, zero_
from .config import ModelConfig


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.decoder
        ch = d.channels
        norm = cfg.norm
        self.shortcuts = cfg.shortcuts
        self.patch = tuple(d.out_patch)
        self.conv_in = conv3(cfg.latent_dim, ch[0])
        if cfg.shortcuts:
            zero_(self.conv_in)
        self.mid = Checkpointed(ResBlock3d(ch[0], ch[0], norm=norm, zero_init=cfg.shortcuts))
        cins = [ch[0]] + ch[:-1]
        self.blocks = nn.ModuleList(
            Checkpointed(UpBlock(cin, cout, factor=f, num_res=d.num_res_blocks, shortcut=cfg.shortcuts, norm=norm))
            for cin, cout, f in zip(cins, ch, cfg.decoder_factors()))
        self.norm_out = make_norm(norm, ch[-1])
        pt, ph, pw = self.patch
        self.proj_out = conv3(ch[-1], cfg.in_channels * pt * ph * pw)
        if cfg.shortcuts:
            zero_(self.proj_out)

    def forward(self, z: Tensor) -> Tensor:
        """``z`` (B, D, t, h, w) -> (B, C, ft t, fh h, fw w) (the paper: 16 t, 32 h, 32 w)."""
        h = self.conv_in(z)
        if self.shortcuts:
            h = h + channel_resize(z, h.shape[1])
        h = self.mid(h)
        for block in self.blocks:
            h = block(h)
        out = self.proj_out(F.silu(self.norm_out(h)))
        if self.shortcuts:
            out = out + channel_resize(h, out.shape[1])
        return depth_to_space(out, self.patch)
