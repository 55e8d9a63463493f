"""Training batches from the shards: webdataset streams, decord decoding, bucket-homogeneous batches.

Every step draws one bucket and one frame count uniformly (the paper's sampling) from a hash of
``seed`` and ``step`` only, so every rank and worker agrees without communicating. Within a
bucket, each consumer (rank x dataloader worker) reads its own part of an epoch's shuffled shard
list (whole shards when there are enough, else every C-th sample), so ranks see disjoint samples.
A consumer's position in each bucket stream is a pure function of the step, so ``start_step``
resumes exactly: whole shards are skipped unopened, and inside a shard the skipped samples are
not decoded.

A batch is ``{"video": (B, C, T, H, W) float32 in [-1, 1], "mask": (B, T) bool, "caption": [str],
"key": [str], "bucket": "WxH", "frames": T, "step": int}``. Frames past a clip's end are zero and
masked False; an image is frame 0 of a clip (mask True only there). ``video`` is stored
channels-last (``torch.channels_last_3d``, the (T, H, W, C) layout decord decodes to), which makes
the uint8 -> float conversion one contiguous pass; ``.contiguous()`` gives the (C, T, H, W) storage.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from data_prep import manifest, storage
from data_prep.buckets import parse_bucket

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """splitmix64 over a tuple of ints: a fast, platform-independent hash."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & _MASK64)) & _MASK64
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        x = z ^ (z >> 31)
    return x


def _str_int(s: str) -> int:
    return int.from_bytes(s.encode()[:8].ljust(8, b"\0"), "big") ^ len(s)


def step_choice(seed: int, step: int, buckets: list[str], frames: list[int]) -> tuple[str, int]:
    """The (bucket, frame count) of ``step``: uniform, and identical on every rank."""
    return buckets[_mix(seed, step, 1) % len(buckets)], frames[_mix(seed, step, 2) % len(frames)]


def decode_frames(sample: dict, frames: int) -> np.ndarray:
    """The first ``min(frames, len)`` frames of a sample's ``mp4`` (decord) or its ``jpg``: (n, H, W, C) uint8.

    A video's array is a view of decord's own buffer (through DLPack), not a copy.
    """
    if "mp4" in sample:
        import decord

        try:
            vr = decord.VideoReader(io.BytesIO(sample["mp4"]), num_threads=1)
            nd = vr.get_batch(list(range(min(frames, len(vr)))))
            return torch.utils.dlpack.from_dlpack(nd.to_dlpack()).numpy()  # keeps nd alive; no 3 MB copy
        except (decord.DECORDError, RuntimeError) as e:
            raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')}: cannot decode mp4: {e}")
    from PIL import Image

    with Image.open(io.BytesIO(sample["jpg"])) as im:
        return np.asarray(im.convert("RGB"))[None]


_CHUNK = 1 << 17  # elements per conversion step: 512 KiB of floats stay in a core's L2 cache


def _fill(dst: torch.Tensor, arr: np.ndarray) -> int:
    """Write (n, H, W, C) uint8 ``arr`` into the contiguous (T, H, W, C) float ``dst`` as values in [-1, 1],
    zeros after frame n; returns n.

    The layouts match, so this runs over flat memory: cast, scale and shift one L2-sized chunk at a
    time (numpy, single-threaded: torch's intra-op threads make it several times slower on a busy
    host). Measured 0.6 ms for a 16x256x256 clip vs 1.2 ms for one ``multiply(dtype=)`` over the
    whole clip plus a subtract.
    """
    n = arr.shape[0]
    v = dst.numpy().reshape(dst.shape[0], -1)
    src, out = np.ascontiguousarray(arr).reshape(-1), v[:n].reshape(-1)
    for o in range(0, src.size, _CHUNK):
        part = out[o:o + _CHUNK]
        np.copyto(part, src[o:o + _CHUNK], casting="unsafe")
        part *= np.float32(1.0 / 127.5)
        part -= np.float32(1.0)
    v[n:] = 0.0
    return n


class BufferPool:
    """Recycles the float storage of batches the consumer has dropped.

    A batch of floats is 4x the bytes decord decodes; in fresh memory every 4 KiB page of it
    faults on first write, which costs more than the conversion itself (measured: ~4 of ~14 ms
    per 16x256x256 clip). A pool entry is handed out again only when no tensor outside the pool
    uses its storage any more (the storage's use count), so a batch the consumer still holds - or
    any view or slice of it - is never overwritten. At most ``size`` storages are kept (a loop
    holds the current batch while the next is built, so 3 suffice), each grown to the largest
    batch asked of it; the pool's memory is thus at most ``size`` batches.
    """

    def __init__(self, size: int = 3):
        # the use count is a private torch API: without it (another torch), no recycling at all
        self.size = size if hasattr(torch._C, "_storage_Use_Count") else 0
        self.storages: list[torch.UntypedStorage] = []

    @staticmethod
    def _free(st: torch.UntypedStorage) -> bool:
        return torch._C._storage_Use_Count(st._cdata) == 1  # only the pool's own reference

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised float32 tensor of ``shape`` (contiguous), on a recycled storage when one is free."""
        nbytes = 4 * int(np.prod(shape))
        free = [st for st in self.storages if self._free(st)]
        fits = [st for st in free if st.nbytes() >= nbytes]
        if fits:
            st = min(fits, key=lambda x: x.nbytes())
        else:
            if free:  # grow: replace the largest free storage (it is too small)
                self.storages.remove(max(free, key=lambda x: x.nbytes()))
            elif len(self.storages) >= self.size:  # all in use: an unpooled batch
                return torch.empty(shape)
            st = torch.UntypedStorage(nbytes)
            self.storages.append(st)
        return torch.empty(0).set_(st, 0, shape)


def _frames_last(t: int, h: int, w: int, batch: int | None = None, pool: BufferPool | None = None,
                 shared: bool = False) -> torch.Tensor:
    """An uninitialised float32 buffer (B, T, H, W, C) (or (T, H, W, C)): decord's layout.

    ``shared``: allocated in shared memory (a DataLoader worker's batch then reaches the main
    process without a copy); else from ``pool`` when given.
    """
    shape = (*(() if batch is None else (batch,)), t, h, w, 3)
    if shared:
        return torch.empty(0).set_(torch.UntypedStorage._new_shared(4 * int(np.prod(shape))), 0, shape)
    return pool.take(shape) if pool is not None else torch.empty(shape)


def _channels_first(buf: torch.Tensor) -> torch.Tensor:
    """The (..., C, T, H, W) view of a (..., T, H, W, C) buffer: ``torch.channels_last_3d`` storage, no copy."""
    return buf.movedim(-1, -4)


def decode_sample(sample: dict, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one sample to ((C, T, H, W) float in [-1, 1], (T,) bool mask of real frames).

    Truncated to ``frames`` or zero-padded up to it; stored channels-last like a batch entry.
    """
    arr = decode_frames(sample, frames)
    buf = _frames_last(frames, arr.shape[1], arr.shape[2])
    mask = torch.zeros(frames, dtype=torch.bool)
    mask[:_fill(buf, arr)] = True
    return _channels_first(buf), mask


def read_shard(url: str, select_files=None) -> Iterator[dict]:
    """The raw samples of one tar shard (local or ``s3://``) in file order, grouped by key as
    webdataset does: ``{"__key__", "__url__", "json", "mp4" | "jpg", ...}`` with bytes values.
    ``select_files(name) -> bool`` skips members unread (their bytes are never decoded)."""
    import webdataset as wds

    with storage.open_read(url) as f:
        files = wds.tariterators.tar_file_expander([{"url": url, "stream": f}], select_files=select_files)
        yield from wds.tariterators.group_by_keys(files)


@dataclass
class SplitSample:
    key: str
    meta: dict
    """The sample's ``json`` (``kind``, ``frames``, ``length``, ``caption``, ``source_id`` ...)."""
    video: torch.Tensor
    """(C, T, H, W) float in [-1, 1], T the clip's own length (1 for an image); see :func:`decode_sample`."""
    mask: torch.Tensor
    """(T,) bool, True on real frames."""

    @property
    def is_image(self) -> bool:
        return self.meta["kind"] == "image" or self.meta["frames"] == 1


def split_samples(dataset: str, split: str = "val", version: str | None = None,
                  limit: int | None = None) -> Iterator[SplitSample]:
    """Every sample of ``split`` once, sorted by key and decoded at its own size: a video at its clip
    length (``meta["length"]``, frames past the end masked), an image as a one-frame clip.

    Raises ``ValueError`` at once (before iteration) if the split has no non-empty shards."""
    info = manifest.read_version(str(dataset), version)
    urls = [storage.join(str(dataset), s) for s in
            sorted(r["shard"] for r in info["shards"] if r["split"] == split and r["count"] > 0)]
    if not urls:
        raise ValueError(f"{dataset} ({info['version']}): no {split} shards")

    def decoded() -> Iterator[SplitSample]:
        samples = sorted((s for url in urls for s in read_shard(url)), key=lambda s: s["__key__"])
        for s in samples[:limit]:
            meta = json.loads(s["json"])
            image = meta["kind"] == "image" or meta["frames"] == 1  # SplitSample.is_image
            video, mask = decode_sample(s, 1 if image else int(meta["length"]))
            yield SplitSample(s["__key__"], meta, video, mask)

    return decoded()


@dataclass
class _Shard:
    url: str
    count: int


class ShardLoader(torch.utils.data.IterableDataset):
    """Iterable of training batches (see the module docstring); use with ``batch_size=None``.

    Args:
        dataset: output folder of ``pvq data shard`` (local or ``s3://``).
        split: ``train`` or ``val``.
        batch_size: samples per batch (per rank).
        frames: frame counts drawn per step (default the paper's 16/32/48/96).
        buckets: bucket names to draw from (default: every bucket with shards in ``split``).
        seed: the schedule and the shuffles derive from it.
        rank, world_size: this process's place (default from ``RANK`` / ``WORLD_SIZE``).
        start_step: first step to produce (resume); ``steps``: stop before this step (None: forever).
        version: dataset version (default ``LATEST``).
        recycle_buffers: without DataLoader workers, build a batch in the storage of one the
            consumer no longer references (:class:`BufferPool`, at most 3 batches held) instead
            of fresh memory.
    """

    def __init__(self, dataset: str, *, split: str = "train", batch_size: int = 4,
                 frames: list[int] | tuple[int, ...] = (16, 32, 48, 96), buckets: list[str] | None = None,
                 seed: int = 42, rank: int | None = None, world_size: int | None = None, start_step: int = 0,
                 steps: int | None = None, version: str | None = None, recycle_buffers: bool = True):
        super().__init__()
        self.dataset, self.split, self.batch_size = dataset, split, batch_size
        self.frames, self.seed = list(frames), seed
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        self.start_step, self.steps = start_step, steps
        self.recycle_buffers = recycle_buffers
        self.version = version or manifest.latest_version(dataset)
        if self.version is None:
            raise FileNotFoundError(f"{dataset}: no dataset (no LATEST); run `pvq data shard` first")
        index = manifest.read_table(storage.join(dataset, self.version, "index.parquet"))
        self.shards: dict[str, list[_Shard]] = {}
        for row in sorted(index, key=lambda r: r["shard"]):
            if row["split"] == split and row["count"] > 0:
                self.shards.setdefault(row["bucket"], []).append(
                    _Shard(storage.join(dataset, row["shard"]), row["count"]))
        available = sorted(self.shards, key=lambda b: (parse_bucket(b)[0] * parse_bucket(b)[1], b))
        if buckets is not None:
            missing = [b for b in buckets if b not in self.shards]
            if missing:
                raise ValueError(f"buckets {missing} have no {split} shards in {dataset} "
                                 f"({self.version}); available: {available}")
            available = list(buckets)
        if not available:
            raise ValueError(f"{dataset} ({self.version}) has no {split} shards")
        self.buckets = available

    # -- schedule -------------------------------------------------------------------------------
    def choice(self, step: int) -> tuple[str, int]:
        return step_choice(self.seed, step, self.buckets, self.frames)

    def _epoch_plan(self, bucket: str, epoch: int, consumer: int, consumers: int) -> list[tuple[_Shard, int, int]]:
        """(shard, first sample, step between samples) read by ``consumer`` in ``epoch``."""
        shards = list(self.shards[bucket])
        order = sorted(range(len(shards)), key=lambda i: _mix(self.seed, epoch, _str_int(bucket), i))
        shards = [shards[i] for i in order]
        if len(shards) >= consumers:
            return [(s, 0, 1) for s in shards[consumer::consumers]]
        total = sum(s.count for s in shards)
        if total < consumers:  # fewer samples than consumers: some consumers share samples
            consumer, consumers = consumer % total, total
        plan, offset = [], 0  # too few shards: every C-th sample of the concatenation
        for s in shards:
            first = (consumer - offset) % consumers
            if first < s.count:
                plan.append((s, first, consumers))
            offset += s.count
        return plan

    def _stream(self, bucket: str, skip: int, consumer: int, consumers: int) -> Iterator[dict]:
        """Raw samples of ``bucket`` for ``consumer``, forever, starting after ``skip`` samples."""
        epoch = 0
        while True:
            plan = self._epoch_plan(bucket, epoch, consumer, consumers)
            per_epoch = sum(len(range(first, s.count, stride)) for s, first, stride in plan)
            if per_epoch == 0:
                raise ValueError(f"bucket {bucket} has too few samples for {consumers} consumers")
            if skip >= per_epoch:
                skip -= per_epoch
                epoch += 1
                continue
            for shard, first, stride in plan:
                wanted = range(first, shard.count, stride)
                if skip >= len(wanted):
                    skip -= len(wanted)
                    continue
                wanted_set = set(wanted[skip:])
                skip = 0
                seen: dict[str, int] = {}

                def select(name: str, _seen=seen, _want=wanted_set) -> bool:
                    key = name.split(".", 1)[0]
                    if key not in _seen:
                        _seen[key] = len(_seen)
                    return _seen[key] in _want

                yield from read_shard(shard.url, select)
            epoch += 1

    # -- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Step s belongs to slot s % workers (fixed for the whole run, so resuming is exact); the
        # DataLoader polls workers round-robin from worker 0, so worker 0 takes the slot of start_step.
        slot = (worker + self.start_step) % workers
        consumer, consumers = self.rank * workers + slot, self.world_size * workers
        # samples this slot already took from each bucket before start_step
        taken = {b: 0 for b in self.buckets}
        for s in range(slot, self.start_step, workers):
            taken[self.choice(s)[0]] += self.batch_size
        streams: dict[str, Iterator[dict]] = {}
        pool = BufferPool() if info is None and self.recycle_buffers else None  # workers use shared memory
        step = self.start_step + worker
        while self.steps is None or step < self.steps:
            bucket, frames = self.choice(step)
            if bucket not in streams:
                streams[bucket] = self._stream(bucket, taken[bucket], consumer, consumers)
            samples = [next(streams[bucket]) for _ in range(self.batch_size)]
            yield self.collate(samples, bucket, frames, step, pool)
            step += workers

    @staticmethod
    def collate(samples: list[dict], bucket: str, frames: int, step: int, pool: BufferPool | None = None) -> dict:
        w, h = parse_bucket(bucket)
        buf = _frames_last(frames, h, w, batch=len(samples), pool=pool,  # every element written below
                           shared=torch.utils.data.get_worker_info() is not None)
        mask = torch.zeros(len(samples), frames, dtype=torch.bool)  # (B, T)
        for i, s in enumerate(samples):
            arr = decode_frames(s, frames)
            if arr.shape[1:] != (h, w, 3):
                raise ValueError(f"sample {s['__key__']} in {s.get('__url__')}: frames {arr.shape[1:3]} do not "
                                 f"match bucket {bucket}")
            mask[i, :_fill(buf[i], arr)] = True
        video = _channels_first(buf)  # (B, C, T, H, W)
        meta = [json.loads(s["json"]) for s in samples]
        return {
            "video": video, "mask": mask,
            "caption": [m["caption"] for m in meta],
            "key": [s["__key__"] for s in samples],
            "source_id": [m["source_id"] for m in meta],
            "bucket": bucket, "frames": frames, "step": step,
        }


def make_loader(dataset: str, *, num_workers: int = 0, **kwargs) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over :class:`ShardLoader`; batches come in step order for any ``num_workers``."""
    ds = ShardLoader(dataset, **kwargs)
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers,
                                       persistent_workers=False, in_order=True)
