"""The paper's data recipe, shared by the model config and the shard job."""

from __future__ import annotations

PAPER_SCALES: tuple[tuple[int, int], ...] = (
    (256, 256), (512, 512), (768, 512), (1024, 512), (1024, 1024),
    (1024, 2048), (2048, 2048), (1280, 720), (1920, 1080), (3840, 2160),
)
"""The ten (W, H) training resolutions of the paper (supplementary §1.1), sampled uniformly per step."""

PAPER_FRAMES: tuple[int, ...] = (16, 32, 48, 96)
"""Clip lengths in frames; clips are truncated or zero-padded to one of them."""
