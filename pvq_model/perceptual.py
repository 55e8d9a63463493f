"""LPIPS (Zhang et al., 2018), AlexNet variant, in plain PyTorch.

torchvision cannot be imported beside this project's torch build, so the AlexNet feature stack is
written out here with torchvision's module layout; it loads

* ``backbone_weights``: a torchvision AlexNet state dict (``alexnet-owt-7be5be79.pth``), and
* ``linear_weights``: LPIPS v0.1 linear layers (``lpips/weights/v0.1/alex.pth`` of the ``lpips``
  package: keys ``lin{i}.model.1.weight``),

both from local paths. Pretrained weights cannot be downloaded on an offline machine: without both
files :func:`build_lpips` returns ``None`` and every report shows LPIPS as absent, never as 0.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .config import LPIPSConfig

ALEX_CHANNELS = (64, 192, 384, 256, 256)
_TAPS = (1, 4, 7, 9, 11)  # ReLU outputs after conv1..conv5 in torchvision's alexnet.features


def alexnet_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )


class LPIPS(nn.Module):
    """Frozen LPIPS distance between image batches (N, 3, H, W) in [-1, 1]; returns (N,)."""

    def __init__(self):
        super().__init__()
        self.features = alexnet_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in ALEX_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, backbone: dict[str, Tensor], linear: dict[str, Tensor]) -> "LPIPS":
        feats = {k.removeprefix("features."): v for k, v in backbone.items() if k.startswith("features.")}
        if not feats:
            raise ValueError("LPIPS backbone: no 'features.*' keys; expected a torchvision AlexNet state dict")
        self.features.load_state_dict(feats)
        lins = {f"{i}.weight": linear[f"lin{i}.model.1.weight"] for i in range(len(ALEX_CHANNELS))}
        self.lins.load_state_dict(lins)
        return self

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h)
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        fa, fb = self._taps(a.float()), self._taps(b.float())
        dist = a.new_zeros(a.shape[0], dtype=torch.float32)
        for lin, x, y in zip(self.lins, fa, fb):
            x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
            y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
            dist = dist + lin((x - y) ** 2).mean(dim=(1, 2, 3))
        return dist


def build_lpips(cfg: LPIPSConfig, device: str | torch.device = "cpu") -> LPIPS | None:
    """LPIPS with the configured local weights, or ``None`` when they are not configured."""
    if not cfg.backbone_weights or not cfg.linear_weights:
        return None
    paths = {"lpips.backbone_weights": cfg.backbone_weights, "lpips.linear_weights": cfg.linear_weights}
    for key, p in paths.items():
        if not Path(p).is_file():
            raise FileNotFoundError(f"{key}: {p} does not exist")
    backbone = torch.load(cfg.backbone_weights, map_location="cpu", weights_only=True)
    linear = torch.load(cfg.linear_weights, map_location="cpu", weights_only=True)
    return LPIPS().load_weights(backbone, linear).to(device)


def frames_of(x: Tensor, mask: Tensor | None) -> Tensor:
    """(B, C, T, H, W) -> (N, C, H, W) of the valid frames (all frames when ``mask`` is None)."""
    frames = x.transpose(1, 2).flatten(0, 1)
    return frames if mask is None else frames[mask.reshape(-1)]


def lpips_video(model: LPIPS, x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean LPIPS over the valid frames of two clips (B, C, T, H, W)."""
    return model(frames_of(x, mask), frames_of(y, mask)).mean()

