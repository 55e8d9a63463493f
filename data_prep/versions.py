"""Versions of a shard dataset: which job a version is built from (so an unfinished one resumes
only for the same sources and config), its local work cache, and finishing it (shards, manifests,
stats, then ``index.parquet`` and ``LATEST``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from data_prep import manifest, storage
from data_prep.config import ShardConfig
from data_prep.tars import write_all


class ShardJobError(RuntimeError):
    """The job cannot run (existing dataset, mismatched partial version); the message says what to do."""


def inputs_fingerprint(items: list[dict]) -> str:
    """Hash of the listed inputs: every item's id, uri, caption, size and mtime/ETag (or its error)."""
    h = hashlib.sha256()
    for i in sorted(items, key=lambda i: (i["id"], i["uri"])):
        h.update(json.dumps([i["id"], i["uri"], i.get("caption", ""), i.get("size"), i.get("version"),
                             i.get("error")]).encode() + b"\n")
    return h.hexdigest()


def job_id(cfg: ShardConfig, sources: list[str], parent: str | None, items: list[dict]) -> dict:
    """What a version is built from (``_job.json``): an unfinished version resumes only for the same job."""
    return {"fingerprint": cfg.fingerprint(), "sources": [storage.redact(s) for s in sources], "parent": parent,
            "maxcount": cfg.shards.maxcount, "maxsize": cfg.shards.maxsize,
            "val_fraction": cfg.shards.val_fraction,
            "inputs": {"count": len(items), "sha256": inputs_fingerprint(items)}}


def start_version(out: str, job: dict, version: str) -> None:
    """Record ``job`` in ``version``'s ``_job.json``, or check that an unfinished version is of the same job."""
    uri = storage.join(out, version, "_job.json")
    if storage.exists(uri):
        old = json.loads(storage.read_text(uri))
        if {k: v for k, v in old.items() if k != "inputs"} != {k: v for k, v in job.items() if k != "inputs"}:
            raise ShardJobError(f"{storage.join(out, version)} is an unfinished version of a different job "
                                f"(other sources or config); delete that folder or rerun with the same "
                                f"sources and config to finish it")
        if old.get("inputs") != job["inputs"]:
            was = old.get("inputs", {}).get("count", "?")
            raise ShardJobError(f"{storage.join(out, version)} is an unfinished version, and the files its sources "
                                f"list changed since it was started (added, removed or modified; {was} inputs "
                                f"then, {job['inputs']['count']} now), so finishing it would mix old and new "
                                f"clips. Delete {storage.join(out, version)} (and {storage.join(out, '_work')} for "
                                f"a local --out) to start it again from the current files, or restore the files")
    else:
        storage.write_bytes(uri, json.dumps(job, sort_keys=True, indent=1).encode())


def work_dir(out: str, version: str, cfg: ShardConfig) -> str:
    """The job's work cache: ``OUT/_work/VERSION`` for a local ``out``; for a remote one, a local
    scratch folder, or ``OUT/_work/VERSION`` on the store when the job joins a cluster
    (``ray.address``), whose nodes share no disk: every node reads and writes it there."""
    if not storage.is_remote(out) or cfg.ray.address:
        return storage.join(out, "_work", version)
    tag = hashlib.sha1(out.encode()).hexdigest()[:12]
    return os.path.join(storage.scratch_dir(cfg.encode.tmp_dir), "pvq-shard-work", tag, version)


def drop_work(work: str) -> None:
    if storage.is_remote(work):
        fs, p = storage.fs_of(work)
        if fs.exists(p):
            fs.rm(p, recursive=True)
        return
    shutil.rmtree(work, ignore_errors=True)
    try:
        os.removedirs(os.path.dirname(work))  # the now empty _work / pvq-shard-work/<tag> folders
    except OSError:
        pass


@dataclass
class NewVersion:
    """What a finished version is made of, before its shards are written."""

    out: str
    version: str
    parent: str | None
    """The version it refreshes (None for version 1)."""
    plans: list[dict]
    """New shards to write (:func:`~data_prep.planning.plan_shards`)."""
    sources: list[dict]
    errors: list[dict]
    started: float
    """``time.time()`` when the job started."""
    encode_s: float
    """Seconds of the encode stage."""
    sources_processed: int
    kept_shards: list[dict] = field(default_factory=list)
    """Index rows of the parent's shards this version references unchanged."""
    kept_samples: list[dict] = field(default_factory=list)
    extra_stats: dict = field(default_factory=dict)


def finish_version(v: NewVersion, cfg: ShardConfig, progress: Callable | None) -> dict:
    """Write ``v``'s new shards, then its manifests and ``_stats.json``, then ``index.parquet`` (which
    completes the version) and ``LATEST``; returns the stats."""
    out, version, plans = v.out, v.version, v.plans
    new_rows = write_all(plans, out, version, progress)
    shards = sorted(v.kept_shards + new_rows, key=lambda r: (r["bucket"], r["split"], r["shard"]))
    samples = [{k: val for k, val in s.items() if k not in ("path", "file")} for s in v.kept_samples]
    for p in plans:
        rel = f"{version}/{p['bucket']}/{p['split']}-{p['index']:06d}.tar"
        for c in p["samples"]:
            samples.append({**{k: val for k, val in c.items() if k not in ("path", "file")}, "shard": rel})
    samples.sort(key=lambda s: (s["bucket"], s["split"], s["key"]))
    errors = sorted(v.errors, key=lambda e: (e["source_id"], e["reason"], e["detail"]))
    sources = sorted(v.sources, key=lambda s: s["id"])
    wall = time.time() - v.started
    stats = {
        "version": version, "parent": v.parent, "config_fingerprint": cfg.fingerprint(),
        "samples": len(samples), "shards": len(shards),
        "clips_per_bucket": dict(sorted(Counter(s["bucket"] for s in samples).items())),
        "clips_per_length": {str(k): n for k, n in sorted(Counter(s["length"] for s in samples).items())},
        "clips_per_split": dict(sorted(Counter(s["split"] for s in samples).items())),
        "clips_per_kind": dict(sorted(Counter(s["kind"] for s in samples).items())),
        "sources": len(sources), "sources_processed": v.sources_processed,
        "errors": len(errors), "errors_by_reason": dict(sorted(Counter(e["reason"] for e in errors).items())),
        "new_samples": sum(len(p["samples"]) for p in plans),
        "wall_s": round(wall, 3), "encode_s": round(v.encode_s, 3),
        # the Ray nodes that processed this job's sources (node id -> sources), and how many
        # sources an earlier, interrupted run had finished (taken from the work cache)
        "sources_by_node": dict(sorted(Counter(s["node"] for s in v.sources if s.get("node")).items())),
        "sources_reused": sum(1 for s in v.sources if s.get("reused")),
        "clips_per_s": round(sum(len(p["samples"]) for p in plans) / wall, 3) if wall > 0 else 0.0,
        **v.extra_stats,
    }
    base = storage.join(out, version)
    manifest.write_table(storage.join(base, "samples.parquet"), samples, manifest.SAMPLE_SCHEMA)
    manifest.write_table(storage.join(base, "sources.parquet"), sources, manifest.SOURCE_SCHEMA)
    manifest.write_table(storage.join(base, "errors.parquet"), errors, manifest.ERROR_SCHEMA)
    storage.write_bytes(storage.join(base, "_stats.json"), json.dumps(stats, indent=1, sort_keys=True).encode())
    manifest.write_table(storage.join(base, "index.parquet"), shards, manifest.SHARD_SCHEMA)  # completes it
    storage.write_bytes(storage.join(out, "LATEST"), (version + "\n").encode())
    return stats
