"""PVQ-VAE encoder: 5 down-sampling blocks (T/16 x H/32 x W/32) with the DWT branch injected into
the first blocks and the FFT branch after the deepest ones."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ChannelNorm, Checkpointed, Conv3d, DownBlock, ResBlock3d, conv3
from .config import ModelConfig
from .spectral import DWTBranch, FFTBranch


class EncoderOutput(NamedTuple):
    latent: Tensor
    """(B, latent_dim, T/16, H/32, W/32) continuous latent, before quantization."""
    frame_features: Tensor
    """(B, C0, T, H/2, W/2) features of the first block, one map per frame (alignment loss)."""


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e = cfg.encoder
        ch = e.channels
        self.conv_in = conv3(cfg.in_channels, ch[0])
        cins = [ch[0]] + ch[:-1]
        self.blocks = nn.ModuleList(
            Checkpointed(DownBlock(cin, cout, temporal=t, num_res=e.num_res_blocks))
            for cin, cout, t in zip(cins, ch, e.temporal_downsample))
        levels = e.dwt_levels if e.dwt else 0
        self.dwt = DWTBranch(cfg.in_channels, ch[:levels], e.temporal_downsample[:levels]) if levels else None
        self.fft = nn.ModuleDict(
            {str(i): FFTBranch(ch[i], e.fft_modes) for i in e.fft_blocks} if e.fft else {})
        self.mid = Checkpointed(ResBlock3d(ch[-1], ch[-1]))
        self.norm_out = ChannelNorm(ch[-1])
        self.conv_out = Conv3d(ch[-1], cfg.latent_dim, 1)

    def forward(self, x: Tensor) -> EncoderOutput:
        """``x`` (B, C, T, H, W) with T % 16 == 0 and H, W % 32 == 0 -> :class:`EncoderOutput`."""
        details = self.dwt(x) if self.dwt is not None else []
        h = self.conv_in(x)
        frame_features = h
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < len(details):
                h = h + details[i]
            if str(i) in self.fft:
                h = self.fft[str(i)](h)
            if i == 0:
                frame_features = h
        h = self.mid(h)
        return EncoderOutput(self.conv_out(F.silu(self.norm_out(h))), frame_features)
