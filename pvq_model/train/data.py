"""Batches for training: the shard loader (``data_prep.loader``) or synthetic clips that follow the
same per-step (bucket, frames) schedule.

The data of optimizer step ``s`` is laid out in *slots*: a step has ``grad_accum x world_size``
micro-batch slots, and rank ``r``'s ``a``-th accumulated micro-batch fills slot ``k = r x grad_accum
+ a``. What a slot holds is a pure function of ``(s, k)`` (and the seed): the bucket and frame count
are drawn once per optimizer step (the paper's "sampled uniformly each step", the same on every
rank), synthetic clips are seeded by ``(s, k, index)``, and in the shard loader every slot is a
consumer of its own. So the global batch of a step depends only on the number of slots, not on how
they are split between ranks and accumulation: a run saved on 2 ranks x grad-accum 1 and resumed on
1 rank x grad-accum 2 (the same global batch, :mod:`pvq_model.train.reshard`) reads exactly the
samples the uninterrupted run would have read, none twice and none skipped. With ``grad_accum`` 1
this is the layout the trainer always had (slot = rank, step = micro-step).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from data_prep.loader import make_loader, step_choice

from ..config import PVQConfig
from ..demo import synthetic_clip
from .augment import augment_


def slot_of(cfg: PVQConfig, rank: int, micro_step: int) -> tuple[int, int]:
    """(optimizer step, slot) of ``rank``'s micro-batch number ``micro_step``."""
    accum = cfg.train.grad_accum
    return micro_step // accum, rank * accum + micro_step % accum


def synthetic_batches(cfg: PVQConfig, rank: int, start_step: int) -> Iterator[dict]:
    """Deterministic synthetic micro-batches of ``rank`` from micro-step ``start_step`` on: the
    micro-batch in slot k of optimizer step s is a pure function of (seed, s, k)."""
    buckets = [f"{w}x{h}" for w, h in cfg.data.scales]
    micro = start_step
    while True:
        step, slot = slot_of(cfg, rank, micro)
        base = 0 if cfg.train.fixed_batch else step
        bucket, frames = step_choice(cfg.train.seed, base, buckets, cfg.data.frames)
        w, h = (int(v) for v in bucket.split("x"))
        clips = [synthetic_clip(cfg.train.seed + 7919 * (base * 131 + slot * 17 + i), frames, h, w)
                 for i in range(cfg.train.micro_batch)]
        video = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
        yield {"video": video, "mask": torch.ones(len(clips), frames, dtype=torch.bool),
               "bucket": bucket, "frames": frames, "step": step, "slot": slot, "caption": [""] * len(clips)}
        micro += 1


def shard_batches(cfg: PVQConfig, rank: int, world_size: int, start_step: int) -> Iterator[dict]:
    """Micro-batches of ``rank`` from the shards, from micro-step ``start_step`` on: one
    :class:`~data_prep.loader.ShardLoader` per accumulation index, each the consumer ``slot`` of
    ``grad_accum x world_size`` (its steps are optimizer steps), taken in turn."""
    t = cfg.train
    accum = t.grad_accum
    first, first_a = divmod(start_step, accum)

    def loader(a: int, start: int, workers: int):
        return iter(make_loader(t.data_path, split="train", batch_size=t.micro_batch, frames=cfg.data.frames,
                                buckets=t.data_buckets, seed=t.seed, rank=rank * accum + a,
                                world_size=world_size * accum, start_step=start, num_workers=workers,
                                version=t.data_version))

    if t.fixed_batch:  # every step repeats each slot's micro-batch of step 0 (as synthetic_batches does)
        fixed = [next(loader(a, 0, 0)) for a in range(accum)]
        micro = start_step
        while True:
            step, slot = slot_of(cfg, rank, micro)
            b = fixed[micro % accum]  # fresh tensors: the trainer augments a batch in place
            yield {**b, "video": b["video"].clone(), "mask": b["mask"].clone(), "step": step, "slot": slot}
            micro += 1
    loaders = [loader(a, first + (a < first_a), t.num_workers) for a in range(accum)]
    a = first_a
    while True:
        batch = next(loaders[a])
        batch["slot"] = rank * accum + a
        yield batch
        a = (a + 1) % accum


def training_batches(cfg: PVQConfig, rank: int, world_size: int, start_step: int) -> Iterator[dict]:
    """Micro-batches from ``start_step`` (a micro-step index) on; resumable without replay, also
    on another world size with the same global batch (module docstring).

    With ``data.hflip`` / ``data.reverse``, each clip is mirrored / reversed by a draw from
    (seed, optimizer step, slot, index) (:mod:`pvq_model.train.augment`), so resuming stays exact."""
    if cfg.train.data_path is None:
        batches = synthetic_batches(cfg, rank, start_step)
    else:
        batches = shard_batches(cfg, rank, world_size, start_step)
    if not (cfg.data.hflip or cfg.data.reverse):
        return batches
    return _augmented(batches, cfg)


def _augmented(batches: Iterator[dict], cfg: PVQConfig) -> Iterator[dict]:
    for b in batches:
        augment_(b["video"], b["mask"], seed=cfg.train.seed, step=b["step"], rank=b["slot"],
                 hflip=cfg.data.hflip, reverse=cfg.data.reverse)
        yield b
