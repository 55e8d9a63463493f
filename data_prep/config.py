"""Typed configuration of a shard job (``configs/shard/*.yaml``).

Loaded with the project's one strict loader (:mod:`pvq_common.config`): unknown keys and wrong
types are errors naming the key path. Overrides are ``key.path=value`` strings with YAML values:
``load_shard_config("configs/shard/default.yaml", ["clips.max_clips_per_video=4"])``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvq_common.config import ConfigError, from_dict, load_tree
from pvq_common.paper import PAPER_FRAMES, PAPER_SCALES


@dataclass
class ClipConfig:
    lengths: list[int] = field(default_factory=lambda: list(PAPER_FRAMES))
    """Clip lengths in frames; each a multiple of 16 (the latent's T/16)."""
    length_policy: str = "longest"
    """``longest``: every window takes the longest configured length that still fits in the
    remaining frames; ``random``: a fitting length drawn from seed + source id + window index."""
    stride: int | None = None
    """Frames between window starts; ``null`` = back to back (the window's own length). Windows never
    overlap: a stride shorter than the window is raised to the window's length."""
    max_clips_per_video: int = 8
    pad_short: bool = False
    """Videos shorter than the shortest length: one zero-padded clip (loader masks the padding) if
    true, else an error row with reason ``too_short``."""
    min_frames: int = 1
    """With ``pad_short``, videos with fewer decodable frames than this are still ``too_short``."""


@dataclass
class BucketConfig:
    scales: list[list[int]] = field(default_factory=lambda: [list(s) for s in PAPER_SCALES])
    """(W, H) resolution buckets; default the paper's ten."""
    max_upscale: float = 1.0
    """A source may be enlarged at most by this factor to fill a bucket (1.0 = never upscale)."""


@dataclass
class EncodeConfig:
    codec: str = "h264"
    """``h264`` (libx264, yuv420p, ``crf``) or ``lossless`` (libx264 qp 0, yuv444p)."""
    crf: int = 18
    preset: str = "veryfast"
    threads: int = 1
    """ffmpeg threads per encode; the job runs ``ray.num_cpus`` encodes side by side."""
    jpeg_quality: int = 2
    """ffmpeg ``-q:v`` for images (2 = best)."""
    tmp_dir: str = "/dev/shm"
    """Fast scratch for downloads and encodes (falls back to the system temp dir if missing)."""


@dataclass
class ShardWriteConfig:
    maxcount: int = 1000
    """Samples per tar at most."""
    maxsize: int = 1 << 30
    """Bytes per tar at most (a single larger sample still gets its own tar)."""
    val_fraction: float = 0.01
    """Fraction of *sources* (not clips) that go to ``val``; by a hash of seed + source id."""


@dataclass
class RayConfig:
    address: str | None = None
    """``null``: start a local cluster (127.0.0.1); else ``auto`` / ``ray://host:port``."""
    num_cpus: int = 2
    object_store_memory: int = 2 << 30
    sources_per_task: int = 4
    """Most sources in one Ray task (larger tasks amortise the per-task overhead; the last tasks are single sources)."""


@dataclass
class ShardConfig:
    seed: int = 42
    clips: ClipConfig = field(default_factory=ClipConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    shards: ShardWriteConfig = field(default_factory=ShardWriteConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    executor: str = "auto"
    """Where the per-source tasks run: ``local`` (a process pool of ``ray.num_cpus`` workers on this
    machine, no Ray start-up), ``ray``, or ``auto``: Ray when ``ray.address`` is set, when this process
    is connected to Ray already, or for more than ``local_max_sources`` sources; else local. Both
    write the same bytes (it is not part of :meth:`ShardConfig.fingerprint`)."""
    local_max_sources: int = 500
    """``executor: auto`` runs at most this many sources on the local pool."""
    hash_sources: bool = True
    """sha256 of every source (metadata, and change detection in ``refresh``)."""
    allowed_hosts: list[str] = field(default_factory=list)
    """Hosts (``name`` or ``name:port``) that http(s) sources may be fetched from. Empty: any host, the
    URL is fetched as given (a CSV can then make the job request any address this machine reaches,
    internal ones included). Sources on other hosts become ``host_not_allowed`` error rows, before
    any request is made."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the bytes of a clip (not Ray or tar-size settings)."""
        d = self.to_dict()
        keep = {"seed": d["seed"], "clips": d["clips"], "buckets": d["buckets"],
                "encode": {k: v for k, v in d["encode"].items() if k not in ("tmp_dir", "threads")}}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def validate(cfg: ShardConfig) -> None:
    """Cross-field checks; each error names the key path and the fix."""
    c = cfg.clips
    if not c.lengths or any(n <= 0 or n % 16 for n in c.lengths):
        raise ConfigError(f"clips.lengths: {c.lengths} must be non-empty multiples of 16 (e.g. [16, 32, 48, 96])")
    if c.length_policy not in ("longest", "random"):
        raise ConfigError(f"clips.length_policy: {c.length_policy!r}; use 'longest' or 'random'")
    if c.stride is not None and c.stride <= 0:
        raise ConfigError("clips.stride: must be a positive number of frames or null")
    if c.max_clips_per_video < 1:
        raise ConfigError("clips.max_clips_per_video: at least 1")
    if not cfg.buckets.scales or any(len(s) != 2 or min(s) <= 0 or s[0] % 2 or s[1] % 2
                                     for s in cfg.buckets.scales):
        raise ConfigError("buckets.scales: a list of [W, H] pairs of positive even numbers")
    if cfg.buckets.max_upscale < 1.0:
        raise ConfigError("buckets.max_upscale: at least 1.0 (1.0 = never upscale)")
    if cfg.encode.codec not in ("h264", "lossless"):
        raise ConfigError(f"encode.codec: {cfg.encode.codec!r}; use 'h264' or 'lossless'")
    if cfg.executor not in ("auto", "local", "ray"):
        raise ConfigError(f"executor: {cfg.executor!r}; use 'auto', 'local' or 'ray'")
    if cfg.executor == "local" and cfg.ray.address:
        raise ConfigError(f"executor: 'local' runs on this machine only, but ray.address is {cfg.ray.address!r}; "
                          f"set executor to 'ray' or 'auto', or ray.address to null")
    if cfg.local_max_sources < 0 or cfg.ray.num_cpus < 1:
        raise ConfigError("local_max_sources must be >= 0 and ray.num_cpus >= 1")
    if cfg.shards.maxcount < 1 or cfg.shards.maxsize < 1:
        raise ConfigError("shards.maxcount / shards.maxsize: must be positive")
    if not 0.0 <= cfg.shards.val_fraction < 1.0:
        raise ConfigError("shards.val_fraction: in [0, 1)")


def shard_config_from_dict(data: dict[str, Any]) -> ShardConfig:
    cfg = from_dict(ShardConfig, data)
    validate(cfg)
    return cfg


def load_shard_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ShardConfig:
    """Load a :class:`ShardConfig` from YAML (or defaults when ``path`` is None) plus overrides."""
    return load_tree(ShardConfig, path, overrides, validate)
