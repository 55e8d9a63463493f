"""Convolutional building blocks shared by the encoder and decoder.

All tensors are channel-first videos (B, C, T, H, W). Normalisation is per position over channels
(:class:`ChannelNorm`), so every block is local: tiled inference matches untiled inference wherever
a tile's receptive field stays inside the tile.

Every resolution change carries a non-parametric *shortcut* beside its convolution (residual
autoencoding, as in DC-AE, Chen et al. 2024): down-sampling adds ``space_to_depth`` followed by
averaging channel groups, up-sampling adds channel duplication followed by ``depth_to_space``. The
convolutions then learn a residual on top of an (average-pool / nearest-upsample) identity path, so
with the convolution beside each shortcut and the last convolution of every residual branch
initialised to zero, a new autoencoder *is* its shortcut path (block averages in, duplicated back
out: close to the pooled baseline) and learns residuals on top of it, so the optimisation of high
spatial compression does not stall (docs/training_dynamics.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, T, H, W), computed in fp32."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        mean = xf.mean(1, keepdim=True)
        var = (xf - mean).pow(2).mean(1, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        y = y * self.weight.float().view(1, -1, 1, 1, 1) + self.bias.float().view(1, -1, 1, 1, 1)
        return y.to(x.dtype)


def make_norm(kind: str, channels: int) -> nn.Module:
    """``channel``: :class:`ChannelNorm` (local); ``group``: GroupNorm over 8 groups (or fewer when
    ``channels`` is small), whose statistics span the whole clip; ``none``: identity."""
    if kind == "channel":
        return ChannelNorm(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels, eps=1e-6)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model.norm: unknown {kind!r}; one of channel, group, none")


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` whose weights follow the input's dtype, with a CPU bf16 workaround.

    * Inside fp32 regions (quantizers, spectral branches) a bf16 engine's weights are cast to the
      fp32 input instead of the module being converted (which would break ZeRO-3 partitions).
    * torch 2.13's CPU bf16 Conv3d backward returns garbage weight gradients for some small shapes
      (measured: (2, 32, 2, 2, 3) input gives |grad| ~ 1e37 where fp32 gives 12.6; see
      tests/model/test_model.py::test_conv3d_bf16_cpu_gradients). On CPU, bf16 convolutions therefore
      run in fp32 and return bf16; on GPU they run natively in bf16.
    """

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.float32 if (x.device.type == "cpu" and x.dtype == torch.bfloat16) else x.dtype
        bias = self.bias.to(dtype) if self.bias is not None else None
        return self._conv_forward(x.to(dtype), self.weight.to(dtype), bias).to(x.dtype)


def channel_resize(x: Tensor, channels: int) -> Tensor:
    """(B, C, ...) -> (B, channels, ...): duplicate each channel, then average consecutive groups.

    With L = lcm(C, channels), every channel is repeated L / C times and groups of L / channels are
    averaged: a fixed linear map that is the identity for equal widths, a group average when
    shrinking and a duplication when growing (DC-AE's shortcut)."""
    c = x.shape[1]
    if c == channels:
        return x
    lcm = c * channels // math.gcd(c, channels)
    if lcm != c:
        x = x.repeat_interleave(lcm // c, dim=1)
    if lcm != channels:
        x = x.unflatten(1, (channels, lcm // channels)).mean(2)
    return x


def space_to_depth(x: Tensor, factor: tuple[int, int, int]) -> Tensor:
    """(B, C, T, H, W) -> (B, C * ft * fh * fw, T / ft, H / fh, W / fw), channel-major."""
    ft, fh, fw = factor
    return rearrange(x, "b c (t ft) (h fh) (w fw) -> b (c ft fh fw) t h w", ft=ft, fh=fh, fw=fw)


def depth_to_space(x: Tensor, factor: tuple[int, int, int]) -> Tensor:
    """Inverse of :func:`space_to_depth`."""
    ft, fh, fw = factor
    return rearrange(x, "b (c ft fh fw) t h w -> b c (t ft) (h fh) (w fw)", ft=ft, fh=fh, fw=fw)


def down_shortcut(x: Tensor, channels: int, factor: tuple[int, int, int]) -> Tensor:
    """Non-parametric down-sampling path: space-to-depth, then channel groups averaged."""
    return channel_resize(space_to_depth(x, factor), channels)


def up_shortcut(x: Tensor, channels: int, factor: tuple[int, int, int]) -> Tensor:
    """Non-parametric up-sampling path: channels duplicated, then depth-to-space."""
    ft, fh, fw = factor
    return depth_to_space(channel_resize(x, channels * ft * fh * fw), factor)


def conv3(cin: int, cout: int, stride: tuple[int, int, int] = (1, 1, 1)) -> Conv3d:
    return Conv3d(cin, cout, 3, stride=stride, padding=1)


def zero_(conv: nn.Conv3d) -> nn.Conv3d:
    """Zero a convolution's weights and bias (the residual branch it ends starts as a no-op)."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class ResBlock3d(nn.Module):
    """norm -> SiLU -> conv3 -> norm -> SiLU -> conv3, plus a (1x1x1 projected) skip.

    With ``zero_init`` the last conv starts at zero, so the block starts as its skip (SkipInit /
    Fixup; used with the shortcuts, so that a new network is its own shortcut path)."""

    def __init__(self, cin: int, cout: int, norm: str = "channel", zero_init: bool = False):
        super().__init__()
        self.norm1, self.conv1 = make_norm(norm, cin), conv3(cin, cout)
        self.norm2, self.conv2 = make_norm(norm, cout), conv3(cout, cout)
        if zero_init:
            zero_(self.conv2)
        self.skip = Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Checkpointed(nn.Module):
    """Runs ``module`` under activation checkpointing (non-reentrant) when enabled and training.

    Non-reentrant checkpointing recomputes the same ops in the same order, so gradients equal the
    non-checkpointed ones bit for bit on CPU.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.enabled = False

    def forward(self, x: Tensor) -> Tensor:
        if self.enabled and self.training and torch.is_grad_enabled():
            return checkpoint(self.module, x, use_reentrant=False)
        return self.module(x)


class DownBlock(nn.Module):
    """Strided conv (stride ``factor`` = (t, h, w), each 1 or 2) plus, with ``shortcut``, the
    space-to-depth shortcut; then ``num_res`` residual blocks."""

    def __init__(self, cin: int, cout: int, *, factor: tuple[int, int, int], num_res: int, shortcut: bool = True,
                 norm: str = "channel"):
        super().__init__()
        self.factor = tuple(factor)
        self.cout, self.shortcut = cout, shortcut
        self.down = conv3(cin, cout, stride=self.factor)
        if shortcut:
            zero_(self.down)
        self.res = nn.Sequential(*[ResBlock3d(cout, cout, norm, zero_init=shortcut) for _ in range(num_res)])

    def forward(self, x: Tensor) -> Tensor:
        h = self.down(x)
        if self.shortcut:
            h = h + down_shortcut(x, self.cout, self.factor)
        return self.res(h)


class UpBlock(nn.Module):
    """Nearest up-sampling by ``factor`` = (t, h, w) and conv3, plus, with ``shortcut``, the
    depth-to-space shortcut; then ``num_res`` residual blocks."""

    def __init__(self, cin: int, cout: int, *, factor: tuple[int, int, int], num_res: int, shortcut: bool = True,
                 norm: str = "channel"):
        super().__init__()
        self.factor = tuple(factor)
        self.cout, self.shortcut = cout, shortcut
        self.conv = conv3(cin, cout)
        if shortcut:
            zero_(self.conv)
        self.res = nn.Sequential(*[ResBlock3d(cout, cout, norm, zero_init=shortcut) for _ in range(num_res)])

    def forward(self, x: Tensor) -> Tensor:
        up = x if self.factor == (1, 1, 1) else F.interpolate(x, scale_factor=self.factor, mode="nearest")
        h = self.conv(up)
        if self.shortcut:
            h = h + up_shortcut(x, self.cout, self.factor)
        return self.res(h)


def set_checkpointing(module: nn.Module, enabled: bool) -> None:
    for m in module.modules():
        if isinstance(m, Checkpointed):
            m.enabled = enabled
