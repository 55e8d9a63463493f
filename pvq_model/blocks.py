"""Convolutional building blocks shared by the encoder and decoder.

All tensors are channel-first videos (B, C, T, H, W). Normalisation is per position over channels
(:class:`ChannelNorm`), so every block is local: tiled inference matches untiled inference wherever
a tile's receptive field stays inside the tile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` whose weights follow the input's dtype, with a CPU bf16 workaround.

    * Inside fp32 regions (quantizers, spectral branches) a bf16 engine's weights are cast to the
      fp32 input instead of the module being converted (which would break ZeRO-3 partitions).
    * torch 2.13's CPU bf16 Conv3d backward returns garbage weight gradients for some small shapes
      (measured: (2, 32, 2, 2, 3) input gives |grad| ~ 1e37 where fp32 gives 12.6; see
      tests/test_model.py::test_conv3d_bf16_cpu_gradients). On CPU, bf16 convolutions therefore
      run in fp32 and return bf16; on GPU they run natively in bf16.
    """

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.float32 if (x.device.type == "cpu" and x.dtype == torch.bfloat16) else x.dtype
        bias = self.bias.to(dtype) if self.bias is not None else None
        return self._conv_forward(x.to(dtype), self.weight.to(dtype), bias).to(x.dtype)


def conv3(cin: int, cout: int, stride: tuple[int, int, int] = (1, 1, 1)) -> Conv3d:
    return Conv3d(cin, cout, 3, stride=stride, padding=1)


class ResBlock3d(nn.Module):
    """norm -> SiLU -> conv3 -> norm -> SiLU -> conv3, plus a (1x1x1 projected) skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = ChannelNorm(cin), conv3(cin, cout)
        self.norm2, self.conv2 = ChannelNorm(cout), conv3(cout, cout)
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
    """Stride-2 conv (time halved only when ``temporal``), then ``num_res`` residual blocks."""

    def __init__(self, cin: int, cout: int, *, temporal: bool, num_res: int):
        super().__init__()
        self.down = conv3(cin, cout, stride=(2 if temporal else 1, 2, 2))
        self.res = nn.Sequential(*[ResBlock3d(cout, cout) for _ in range(num_res)])

    def forward(self, x: Tensor) -> Tensor:
        return self.res(self.down(x))


class UpBlock(nn.Module):
    """Nearest up-sampling x2 (time too when ``temporal``), conv3, then ``num_res`` residual blocks."""

    def __init__(self, cin: int, cout: int, *, temporal: bool, num_res: int):
        super().__init__()
        self.factor = (2 if temporal else 1, 2, 2)
        self.conv = conv3(cin, cout)
        self.res = nn.Sequential(*[ResBlock3d(cout, cout) for _ in range(num_res)])

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return self.res(self.conv(x))


def set_checkpointing(module: nn.Module, enabled: bool) -> None:
    for m in module.modules():
        if isinstance(m, Checkpointed):
            m.enabled = enabled
