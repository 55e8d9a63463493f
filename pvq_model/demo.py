"""``pvq demo``: what runs end to end today, on clips the project generates itself.

1. Writes a few deterministic synthetic clips (moving shapes over gradients, several sizes) as mp4.
2. Reconstructs them with the untrained debug model (the baseline).
3. Fits the debug model on them for a few hundred CPU steps (plain PyTorch loop) and saves it.
4. Reconstructs them again through ``pvq reconstruct``'s code path and prints both tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .video_io import write_video


def synthetic_clip(seed: int, frames: int, height: int, width: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a smooth colour gradient with a disc and a square moving across it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / width * np.pi * rng.uniform(1, 3))], -1)
    out = np.empty((frames, height, width, 3), np.float32)
    c1, c2 = rng.uniform(0.2, 1.0, 3), rng.uniform(0.0, 0.8, 3)
    v = rng.uniform(-1.5, 1.5, 4)
    for t in range(frames):
        img = base.copy()
        cy, cx = height / 2 + v[0] * t, width / 3 + v[1] * t * 2
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (min(height, width) / 6) ** 2
        img[disc] = c1
        sy, sx = int(height / 4 + v[2] * t) % height, int(2 * width / 3 + v[3] * t) % width
        img[sy:sy + height // 5, sx:sx + width // 5] = c2
        out[t] = img
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def write_demo_clips(directory: Path) -> list[Path]:
    """Three clips: 64x64 (16 frames), 96x64 (32 frames), 80x48 (20 frames, padded by the model)."""
    specs = [(0, 16, 64, 64), (1, 32, 64, 96), (2, 20, 48, 80)]
    return [write_video(directory / f"synthetic_{s}_{w}x{h}.mp4", synthetic_clip(s, t, h, w), fps=12, crf=12)
            for s, t, h, w in specs]
