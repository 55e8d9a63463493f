"""Deterministic synthetic clips (moving shapes over colour gradients), generated in memory.

Used by the trainer when no shard dataset is configured (``train.data_path: null``), by the
benchmarks and by the tests; the embedded demo *data set* of ``make demo`` is
``data_prep.samples``."""

from __future__ import annotations

import numpy as np


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
