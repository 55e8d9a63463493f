"""Planning the shards of a version: clips grouped by bucket and split, in a deterministic order,
rolled over by ``maxcount`` / ``maxsize``, so a rerun - after a crash or not - gives byte-identical shards."""

from __future__ import annotations

import hashlib
from collections import defaultdict

from data_prep import manifest
from data_prep.config import ShardConfig
from data_prep.tars import TAR_OVERHEAD


def plan_shards(clips: list[dict], cfg: ShardConfig, start_index: dict[tuple[str, str], int] | None = None
                ) -> list[dict]:
    """Group clips into shards per (bucket, split), rolled over by maxcount / maxsize.

    Within a group the order is a hash of seed and key: deterministic, and clips of one video are
    spread over the shards instead of sitting next to each other (better-mixed batches).
    """
    start_index = start_index or {}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in clips:
        groups[(c["bucket"], c["split"])].append(c)
    plans = []
    for (bucket, split) in sorted(groups):
        items = sorted(groups[(bucket, split)],
                       key=lambda c: hashlib.sha1(f"{cfg.seed}:{c['key']}".encode()).hexdigest())
        n = start_index.get((bucket, split), 0)
        cur, size = [], 0
        for c in items:
            est = c["bytes"] + len(manifest.sample_json(c)) + 2 * TAR_OVERHEAD
            if cur and (len(cur) >= cfg.shards.maxcount or size + est > cfg.shards.maxsize):
                plans.append({"bucket": bucket, "split": split, "index": n, "samples": cur})
                n, cur, size = n + 1, [], 0
            cur.append(c)
            size += est
        if cur:
            plans.append({"bucket": bucket, "split": split, "index": n, "samples": cur})
    return plans


def next_indices(shards: list[dict]) -> dict[tuple[str, str], int]:
    """The first unused shard number per (bucket, split) after the index rows ``shards`` (a refresh
    numbers its new shards after its parent's)."""
    out: dict[tuple[str, str], int] = defaultdict(int)
    for s in shards:
        n = int(s["shard"].rsplit("-", 1)[1].split(".")[0])
        out[(s["bucket"], s["split"])] = max(out[(s["bucket"], s["split"])], n + 1)
    return out
