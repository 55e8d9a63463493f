"""PVQ-VAE encoder: 5 down-sampling blocks (the paper: T/16 x H/32 x W/32) with the DWT branch
injected into the first blocks and the FFT branch after the deepest ones."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Checkpointed, Conv3d, DownBlock, ResBlock3d, channel_resize, conv3, make_norm, zero_
from .config import ModelConfig
from .dwt_branch import DWTBranch
from .fft_branch import FFTBranch


class EncoderOutput(NamedTuple):
    latent: Tensor
    """(B, latent_dim, T/ft, H/fh, W/fw) continuous latent, before quantization."""
    frame_features: Tensor
    """(B, C0, T, H/2, W/2) features of the first block, one map per frame (alignment loss)."""


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e = cfg.encoder
        ch = e.channels
        norm = cfg.norm
        self.shortcuts = cfg.shortcuts
        self.conv_in = conv3(cfg.in_channels, ch[0])
        if cfg.shortcuts:
            zero_(self.conv_in)
        cins = [ch[0]] + ch[:-1]
        self.blocks = nn.ModuleList(
            Checkpointed(DownBlock(cin, cout, factor=f, num_res=e.num_res_blocks, shortcut=cfg.shortcuts,
                                   norm=norm))
            for cin, cout, f in zip(cins, ch, cfg.encoder_factors()))
        levels = e.dwt_levels if e.dwt else 0
        self.dwt = DWTBranch(cfg.in_channels, ch[:levels], e.temporal_downsample[:levels]) if levels else None
        self.fft = nn.ModuleDict(
            {str(i): FFTBranch(ch[i], e.fft_modes) for i in e.fft_blocks} if e.fft else {})
        if cfg.shortcuts:  # the branches start silent and learn what the shortcut path lacks
            for proj in ([*self.dwt.proj] if self.dwt is not None else []) + [f.proj for f in self.fft.values()]:
                zero_(proj)
        self.mid = Checkpointed(ResBlock3d(ch[-1], ch[-1], norm=norm, zero_init=cfg.shortcuts))
        self.norm_out = make_norm(norm, ch[-1])
        self.conv_out = Conv3d(ch[-1], cfg.latent_dim, 1)
        if cfg.shortcuts:
            zero_(self.conv_out)

    def forward(self, x: Tensor) -> EncoderOutput:
        """``x`` (B, C, T, H, W) with (T, H, W) multiples of the compression -> :class:`EncoderOutput`."""
        details = self.dwt(x) if self.dwt is not None else []
        h = self.conv_in(x)
        if self.shortcuts:
            h = h + channel_resize(x, h.shape[1])
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
        latent = self.conv_out(F.silu(self.norm_out(h)))
        if self.shortcuts:
            latent = latent + channel_resize(h, latent.shape[1])
        return EncoderOutput(latent, frame_features)
