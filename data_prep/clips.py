"""Clip windows: which frame ranges of a video become training clips.

Windows never overlap; each has a target ``length`` (16/32/48/96) and ``frames`` valid frames
(``frames < length`` only for a zero-padded short video, which the loader masks).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from data_prep.config import ClipConfig


@dataclass(frozen=True)
class Window:
    start: int
    frames: int
    length: int


def _draw(seed: int, source_id: str, index: int, n: int) -> int:
    h = hashlib.sha256(f"{seed}:{source_id}:{index}".encode()).digest()
    return int.from_bytes(h[:8], "big") % n


def plan_windows(total_frames: int, cfg: ClipConfig, *, seed: int = 0, source_id: str = "") -> list[Window]:
    """Windows for a video of ``total_frames`` frames; ``[]`` when it is too short (and not padded)."""
    lengths = sorted(set(cfg.lengths))
    if total_frames < lengths[0]:
        if cfg.pad_short and total_frames >= max(cfg.min_frames, 1):
            return [Window(0, total_frames, lengths[0])]
        return []
    out: list[Window] = []
    start = 0
    while len(out) < cfg.max_clips_per_video:
        fit = [n for n in lengths if start + n <= total_frames]
        if not fit:
            break
        length = fit[-1] if cfg.length_policy == "longest" else fit[_draw(seed, source_id, len(out), len(fit))]
        out.append(Window(start, length, length))
        start += max(length, cfg.stride or length)
    return out


def split_of(source_id: str, seed: int, val_fraction: float) -> str:
    """``train`` or ``val`` for a source, from a hash of seed and source id (stable across runs)."""
    h = hashlib.sha256(f"split:{seed}:{source_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"
