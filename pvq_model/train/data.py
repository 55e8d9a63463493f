"""Batches for training: the shard loader (``data_prep.loader``) or synthetic clips that follow the
same per-step (bucket, frames) schedule."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from data_prep.loader import make_loader, step_choice

from ..config import PVQConfig
from ..demo import synthetic_clip
from .augment import augment_


def synthetic_batches(cfg: PVQConfig, rank: int, start_step: int) -> Iterator[dict]:
    """Deterministic synthetic batches: step s on rank r is a pure function of (seed, s, r)."""
    buckets = [f"{w}x{h}" for w, h in cfg.data.scales]
    step = start_step
    while True:
        bucket, frames = step_choice(cfg.train.seed, 0 if cfg.train.fixed_batch else step, buckets, cfg.data.frames)
        w, h = (int(v) for v in bucket.split("x"))
        base = 0 if cfg.train.fixed_batch else step
        clips = [synthetic_clip(cfg.train.seed + 7919 * (base * 131 + rank * 17 + i), frames, h, w)
                 for i in range(cfg.train.micro_batch)]
        video = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
        yield {"video": video, "mask": torch.ones(len(clips), frames, dtype=torch.bool),
               "bucket": bucket, "frames": frames, "step": step, "caption": [""] * len(clips)}
        step += 1


def training_batches(cfg: PVQConfig, rank: int, world_size: int, start_step: int) -> Iterator[dict]:
    """Micro-batches from ``start_step`` (a micro-step index) on; resumable without replay.

    With ``data.hflip`` / ``data.reverse``, each clip is mirrored / reversed by a draw from
    (seed, micro-step, rank, index) (:mod:`pvq_model.train.augment`), so resuming stays exact."""
    t = cfg.train
    if t.data_path is None:
        batches = synthetic_batches(cfg, rank, start_step)
    else:
        batches = iter(make_loader(t.data_path, split="train", batch_size=t.micro_batch, frames=cfg.data.frames,
                                   buckets=t.data_buckets, seed=t.seed, rank=rank, world_size=world_size,
                                   start_step=start_step, num_workers=t.num_workers, version=t.data_version))
    if not (cfg.data.hflip or cfg.data.reverse):
        return batches
    return _augmented(batches, cfg, rank)


def _augmented(batches: Iterator[dict], cfg: PVQConfig, rank: int) -> Iterator[dict]:
    for b in batches:
        augment_(b["video"], b["mask"], seed=cfg.train.seed, step=b["step"], rank=rank,
                 hflip=cfg.data.hflip, reverse=cfg.data.reverse)
        yield b
