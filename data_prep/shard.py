"""The shard job: sources -> probe -> clips -> bucket -> encode -> webdataset tars + manifests.

:func:`shard` builds version 1 of a dataset, :func:`refresh` a new version with only new or changed
sources processed. Both hold :func:`output_lock` on the output and run the same steps, one module
each:

1. inputs (:mod:`data_prep.sources`): list the sources, refuse hosts outside ``allowed_hosts``, stat
   every file (size and mtime/ETag, for resume and change detection).
2. encode (:mod:`data_prep.transform`, on Ray via :mod:`data_prep.ray_runtime`): per group of
   sources, one fused ``map_batches`` probes, plans windows, picks bucket and split, and cuts and
   encodes every clip into a local work cache; only small metadata comes back to the driver.
3. plan (:mod:`data_prep.planning`): clips grouped by bucket and split in a deterministic order and
   rolled over by ``maxcount``/``maxsize``, so a rerun - after a crash or not - gives byte-identical
   shards.
4. write and finish (:mod:`data_prep.tars`, :mod:`data_prep.versions`): a few driver threads pack
   ``{bucket}/{split}-{n:06d}.tar`` and its manifest (pure I/O), then the version's manifests,
   stats, ``index.parquet`` (which completes it) and ``LATEST``.

:func:`refresh` reuses everything unchanged: shards without a changed or removed source are
referenced from the parent version, the others repacked.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from data_prep import manifest, storage
from data_prep.config import ShardConfig
from data_prep.local_runtime import pick_executor
from data_prep.planning import next_indices, plan_shards
from data_prep.probe import sha256_file
from data_prep.ray_runtime import ensure_ray, task_groups
from data_prep.sources import check_hosts, host_allowed, list_sources, stat_sources
from data_prep.tars import extract_carried, write_shard
from data_prep.transform import encode_sources, process_source, process_sources_batch, safe_key
from data_prep.versions import (NewVersion, ShardJobError, drop_work, finish_version, inputs_fingerprint, job_id,
                                start_version, work_dir)

__all__ = [  # the job's API; the step functions are re-exported from their modules
    "shard", "refresh", "output_lock", "JobResult", "ShardJobError", "ensure_ray", "task_groups", "check_hosts",
    "host_allowed", "stat_sources", "process_source", "process_sources_batch", "safe_key", "plan_shards",
    "write_shard", "inputs_fingerprint",
]


KILLED_HOLDER_GRACE_S = 10.0
"""How long a job waits for the lock of a job whose driver is dead on this host (its local workers
are still exiting); a live holder is refused at once."""


def _holder_alive(holder: str) -> bool:
    """Whether the lock text ``pid N on HOST, since ...`` names a live process of this host (a holder
    on another host, or text that does not parse, counts as alive)."""
    import re

    m = re.match(r"pid (\d+) on (\S+?),", holder)
    if m is None or m.group(2) != os.uname().nodename:
        return True
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    return True


def _put_s3_lock(fs, p: str, uri: str, holder: str) -> bool:
    """Create the lock object if there is none (a conditional put); False when one exists."""
    try:
        fs.pipe_file(p, holder.encode(), mode="create")
        return True
    except (FileExistsError, OSError) as e:
        if not isinstance(e, FileExistsError) and "precondition" not in str(e).lower():
            raise storage._wrap(uri, e) from None  # credentials, endpoint, bucket: named with the fix
        return False


def _take_over_s3_lock(fs, p: str, uri: str, holder: str, stale: str) -> bool:
    """Replace the lock ``stale`` of a job of this host whose process is gone. Only jobs of this host
    can judge that, so a local ``flock`` (keyed by the URI) serialises them: under it the object is
    read again and replaced only if it still says ``stale``, and the new one is again a conditional
    put, so a job of another host that got in first keeps its lock."""
    key = hashlib.sha1(uri.encode()).hexdigest()[:16]
    fd = os.open(os.path.join(tempfile.gettempdir(), f"pvq-s3-lock-{key}"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if storage.read_text(uri).strip() != stale:
                return False
            fs.rm_file(p)
        except (OSError, storage.StorageError):
            pass  # deleted meanwhile: the put below decides
        return _put_s3_lock(fs, p, uri, holder)
    finally:
        os.close(fd)


@contextmanager
def output_lock(out: str) -> Iterator[None]:
    """One writer per local ``--out``: an exclusive ``flock`` on ``OUT/.lock`` for the whole job.

    A second job on the same output exits at once with a message naming the holder (the lock goes
    with the process, also on ``kill -9``). On S3 the lock is the object ``OUT/.lock`` created with
    a conditional put (``If-None-Match: *``) and deleted at the end; a job killed with -9 leaves it.
    A rerun on the host of the killed job, whose process is gone, takes the lock over (see
    :func:`_take_over_s3_lock`); from another host the message says to delete it once no job runs.
    """
    holder = f"pid {os.getpid()} on {os.uname().nodename}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    if storage.is_remote(out):
        uri = storage.join(out, ".lock")
        fs, p = storage.fs_of(uri)
        if not _put_s3_lock(fs, p, uri, holder):
            try:
                other = storage.read_text(uri).strip()
            except (OSError, storage.StorageError):
                other = "unknown"
            if _holder_alive(other) or not _take_over_s3_lock(fs, p, uri, holder, other):
                raise ShardJobError(f"{out} is being written by another shard job ({other}), or one that was "
                                    f"killed on another host; wait for it to finish, or delete {uri} once no job "
                                    f"is running") from None
            logging.getLogger(__name__).warning("%s: took over the lock of a killed shard job (%s): its process "
                                                "is gone", out, other)
        try:
            yield
        finally:
            fs.rm_file(p)
        return
    root = storage.strip_file(out)
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + KILLED_HOLDER_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                other = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                # the holder's driver is gone: what still holds the lock are its forked workers, which
                # die with it (PR_SET_PDEATHSIG) within moments; wait for them rather than refuse
                if not _holder_alive(other) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise ShardJobError(f"{out} is being written by another shard job ({other}); wait for it to "
                                    f"finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass
class JobResult:
    out: str
    version: str | None
    wrote: bool
    message: str
    stats: dict = field(default_factory=dict)


def shard(sources: list[str], out: str, cfg: ShardConfig, *, progress: Callable[[str, int], Callable] | None = None,
          keep_work: bool = False) -> JobResult:
    """Build version 1 of a dataset at ``out`` from ``sources`` (resuming an unfinished run).

    Holds :func:`output_lock` on ``out`` for the whole job."""
    with output_lock(out):
        return _shard(sources, out, cfg, progress=progress, keep_work=keep_work)


def _shard(sources: list[str], out: str, cfg: ShardConfig, *, progress: Callable[[str, int], Callable] | None,
           keep_work: bool) -> JobResult:
    t0 = time.time()
    if manifest.latest_version(out) is not None:
        raise ShardJobError(f"{out} already holds a dataset (version {manifest.latest_version(out)}); "
                            f"use `pvq data refresh` to update it, or choose an empty --out")
    items = _listed_inputs(sources, out, cfg)
    version = manifest.version_name(1)
    start_version(out, job_id(cfg, sources, None, items), version)
    storage.remove_temporaries(storage.join(out, version))
    work = work_dir(out, version, cfg)
    te = time.time()
    executor = pick_executor(cfg, len(items))
    clips, srcs, errors = encode_sources(items, cfg, work, progress and progress("sources", len(items)), executor)
    t_encode = time.time() - te
    plans = plan_shards(clips, cfg)
    stats = finish_version(NewVersion(out, version, None, plans, srcs, errors, started=t0, encode_s=t_encode,
                                      sources_processed=len(items), extra_stats={"executor": executor}),
                           cfg, progress and progress("shards", len(plans)))
    if not keep_work:
        drop_work(work)
    return JobResult(out, version, True, f"wrote {version}: {stats['samples']} samples in {stats['shards']} "
                                         f"shards, {stats['errors']} errors", stats)


def _listed_inputs(sources: list[str], out: str, cfg: ShardConfig) -> list[dict]:
    """The job's inputs: listed (``out`` left out), hosts checked, stat'ed (redirects checked too)."""
    return stat_sources(check_hosts(list_sources(sources, exclude=[out]), cfg.allowed_hosts), cfg.allowed_hosts)


def _changed(old: dict, new: dict, tmp_dir: str, allowed_hosts: list[str]) -> bool:
    if old["uri"] != storage.redact(new["uri"]) or old["caption"] != new["caption"] or old["kind"] != new["kind"]:
        return True
    if old["size"] != new["size"]:
        return True
    if old["version"] == new["version"]:
        return False
    if new["size"] < 0 or not old.get("sha256"):  # missing both times / no hash to compare
        return new["size"] >= 0
    try:
        with storage.local_copy(new["uri"], tmp_dir, allowed_hosts) as path:
            return sha256_file(path) != old["sha256"]
    except (OSError, storage.StorageError):
        return True


def refresh(sources: list[str], out: str, cfg: ShardConfig, *,
            progress: Callable[[str, int], Callable] | None = None, keep_work: bool = False) -> JobResult:
    """Write a new version with only new/changed sources processed and removed ones dropped.

    Unchanged shards are referenced from their old version; shards holding a changed or removed
    source are repacked (their other samples copied over). No source change: nothing is written.
    Holds :func:`output_lock` on ``out`` for the whole job.
    """
    with output_lock(out):
        return _refresh(sources, out, cfg, progress=progress, keep_work=keep_work)


def _refresh(sources: list[str], out: str, cfg: ShardConfig, *, progress: Callable[[str, int], Callable] | None,
             keep_work: bool) -> JobResult:
    t0 = time.time()
    prev = manifest.read_version(out)
    items = _listed_inputs(sources, out, cfg)
    old_sources = {s["id"]: s for s in prev["sources"]}
    new_by_id = {i["id"]: i for i in items}
    changed = {i["id"] for i in items
               if i["id"] in old_sources and _changed(old_sources[i["id"]], i, cfg.encode.tmp_dir, cfg.allowed_hosts)}
    added = {i["id"] for i in items if i["id"] not in old_sources}
    removed = {sid for sid in old_sources if sid not in new_by_id}
    same_cfg = prev["stats"].get("config_fingerprint") == cfg.fingerprint()
    if not same_cfg:
        raise ShardJobError(f"{out}: the config differs from the one that built {prev['version']} "
                            f"(clip/bucket/encode settings); shard into a new --out instead")
    if not (changed or added or removed):
        return JobResult(out, prev["version"], False, f"no source changed since {prev['version']}; nothing written",
                         prev["stats"])
    version = manifest.version_name(manifest.version_number(prev["version"]) + 1)
    start_version(out, job_id(cfg, sources, prev["version"], items), version)
    storage.remove_temporaries(storage.join(out, version))
    work = work_dir(out, version, cfg)
    gone = changed | removed
    affected = {s["shard"] for s in prev["samples"] if s["source_id"] in gone}
    kept_shards = [s for s in prev["shards"] if s["shard"] not in affected]
    kept_samples = [s for s in prev["samples"] if s["shard"] not in affected]
    carried = extract_carried([s for s in prev["samples"] if s["shard"] in affected and s["source_id"] not in gone],
                               out, os.path.join(work, "carried"))
    todo = [i for i in items if i["id"] in changed | added]
    te = time.time()
    executor = pick_executor(cfg, len(todo))
    clips, new_srcs, new_errors = encode_sources(todo, cfg, work, progress and progress("sources", len(todo)),
                                                 executor)
    t_encode = time.time() - te
    plans = plan_shards(carried + clips, cfg, next_indices(prev["shards"]))
    todo_ids = {i["id"] for i in todo}
    srcs = [s for s in prev["sources"] if s["id"] in new_by_id and s["id"] not in todo_ids]
    for s in srcs:  # carry the stat of unchanged sources forward (mtime may have moved, hash equal)
        s.update(size=new_by_id[s["id"]]["size"], version=new_by_id[s["id"]]["version"])
    srcs += new_srcs
    errors = [e for e in prev["errors"] if e["source_id"] in new_by_id and e["source_id"] not in todo_ids]
    errors += new_errors
    stats = finish_version(NewVersion(out, version, prev["version"], plans, srcs, errors, started=t0,
                                      encode_s=t_encode, sources_processed=len(todo), kept_shards=kept_shards,
                                      kept_samples=kept_samples,
                                      extra_stats={"added": len(added), "changed": len(changed),
                                                   "removed": len(removed), "executor": executor}),
                           cfg, progress and progress("shards", len(plans)))
    if not keep_work:
        drop_work(work)
    return JobResult(out, version, True, f"wrote {version}: +{len(added)} new, {len(changed)} changed, "
                                         f"-{len(removed)} removed sources; {stats['samples']} samples", stats)
