"""The shard job: sources -> probe -> clips -> bucket -> encode -> webdataset tars + manifests.

A Ray Data stage (one fused ``map_batches``) then a packing stage:

1. ``process_sources`` (per group of sources): download if remote, probe, sha256, plan windows,
   pick the bucket and the split, then one ffmpeg per source cuts and encodes all its clips into a
   local work cache (one folder per source, renamed into place when complete, so a killed job
   resumes without redoing finished sources). Only small metadata goes back to the driver.
2. ``write_shard`` (per planned shard, a few driver threads: it is pure I/O): packs cached clips into
   ``{bucket}/{split}-{n:06d}.tar`` (temporary name, then rename; S3 objects appear only once
   uploaded) and then writes its manifest.

Between them, the driver plans the shards deterministically (clips grouped by bucket and split,
ordered by a hash of seed and key, rolled over by ``maxcount``/``maxsize``), so a rerun - after a
crash or not - gives byte-identical shards. :func:`refresh` reuses everything unchanged and writes a new version.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from data_prep import manifest, storage
from data_prep.buckets import bucket_name, center_crop, choose_bucket
from data_prep.clips import plan_windows, split_of
from data_prep.config import ShardConfig, shard_config_from_dict
from data_prep.encode import EncodeError, encode_image, encode_video
from data_prep.probe import probe, sha256_file
from data_prep.sources import SourceItem, list_sources

TAR_OVERHEAD = 3 * 512  # per tar member: header + padding (upper bound used for maxsize)


class ShardJobError(RuntimeError):
    """The job cannot run (existing dataset, mismatched partial version); the message says what to do."""


@contextmanager
def output_lock(out: str) -> Iterator[None]:
    """One writer per local ``--out``: an exclusive ``flock`` on ``OUT/.lock`` for the whole job.

    A second job on the same output exits at once with a message naming the holder (the lock goes
    with the process, also on ``kill -9``). On S3 the lock is the object ``OUT/.lock`` created with
    a conditional put (``If-None-Match: *``) and deleted at the end; a job killed with -9 leaves it,
    and the message says to delete it once no job is running.
    """
    holder = f"pid {os.getpid()} on {os.uname().nodename}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    if storage.is_remote(out):
        uri = storage.join(out, ".lock")
        fs, p = storage.fs_of(uri)
        try:
            fs.pipe_file(p, holder.encode(), mode="create")
        except (FileExistsError, OSError) as e:
            if not isinstance(e, FileExistsError) and "precondition" not in str(e).lower():
                raise storage._wrap(uri, e) from None  # credentials, endpoint, bucket: named with the fix
            try:
                other = storage.read_text(uri).strip()
            except (OSError, storage.StorageError):
                other = "unknown"
            raise ShardJobError(f"{out} is being written by another shard job ({other}), or one that was "
                                f"killed; wait for it to finish, or delete {uri} once no job is running") from None
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
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise ShardJobError(f"{out} is being written by another shard job ({holder}); wait for it to "
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


# ----------------------------------------------------------------------------------------------
# Ray


def ensure_ray(cfg: ShardConfig) -> None:
    """Start (or join) Ray with the settings that keep it on 127.0.0.1 (DESIGN §5)."""
    local = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    if not cfg.ray.address:
        # Without this, Ray 2.60 picks the node IP "from the perspective" of an outside address and
        # binds its GCS/raylet on every interface; with it, everything stays on 127.0.0.1.
        local["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    for k, v in local.items():
        os.environ.setdefault(k, v)
    import ray
    import ray._private.ray_constants as ray_constants

    if not ray.is_initialized():
        r = cfg.ray
        kwargs = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                      runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
        if r.address:
            ray.init(address=r.address, **kwargs)
        else:
            ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the env was set
            ray.init(num_cpus=r.num_cpus, object_store_memory=r.object_store_memory, **kwargs)
    # also when the caller started Ray itself (a flow, a notebook, the tests)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data reserves part of the CPUs per operator by default; with a single map stage on a
    # small node that holds one of two slots idle for about a second at the start and between
    # tasks (measured: 12 tasks of 0.5 s on 2 CPUs take 4.7 s with it, 3.2 s without)
    ctx.op_resource_reservation_enabled = False


# ----------------------------------------------------------------------------------------------
# Stage 1: one source -> cached clips + metadata


def safe_key(source_id: str) -> str:
    """A webdataset-safe key stem (no dots or slashes) that stays unique via a short hash."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", source_id)[:48]
    return f"{stem}-{hashlib.sha1(source_id.encode()).hexdigest()[:8]}"


def _cache_name(item: dict, fingerprint: str) -> str:
    h = hashlib.sha1(f"{item['id']}|{item['uri']}|{item['size']}|{item['version']}|{item['caption']}|"
                     f"{fingerprint}".encode()).hexdigest()[:16]
    return f"{safe_key(item['id'])}-{h}"


def _error(item: dict, reason: str, detail: str) -> dict:
    return {"source_id": item["id"], "uri": item["uri"], "reason": reason, "detail": detail}


def process_source(item: dict, cfg: ShardConfig, work_dir: str) -> dict:
    """Probe, cut and encode one source into ``work_dir``; returns ``{source, clips, errors}``.

    Never raises for bad input: every failure is an error row with a reason.
    """
    source = {k: item.get(k) for k in ("id", "uri", "kind", "caption", "size", "version")}
    source.update(sha256="", status="ok", clips=0)
    if item.get("error"):
        return {"source": {**source, "status": item["error"]}, "clips": [],
                "errors": [_error(item, item["error"], item.get("detail", ""))]}
    final = os.path.join(work_dir, "sources", _cache_name(item, cfg.fingerprint()))
    meta_path = os.path.join(final, "meta.json")
    if os.path.exists(meta_path):  # finished by an earlier (possibly killed) run
        with open(meta_path) as f:
            return {**json.load(f), "cache": final}
    if item.get("size", 0) < 0:
        return {"source": {**source, "status": "missing"}, "clips": [],
                "errors": [_error(item, "missing", f"no such file: {item['uri']}")]}
    tmp = os.path.join(work_dir, "sources", f".tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp, exist_ok=True)
    try:
        result = _process_into(item, source, cfg, tmp)
        for c in result["clips"]:
            c["file"] = os.path.basename(c["file"])
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(result, f, sort_keys=True)
        if os.path.exists(final):  # a concurrent duplicate finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
        return {**result, "cache": final}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _process_into(item: dict, source: dict, cfg: ShardConfig, tmp: str) -> dict:
    def fail(reason: str, detail: str) -> dict:
        return {"source": {**source, "status": reason}, "clips": [], "errors": [_error(item, reason, detail)]}

    try:
        with storage.local_copy(item["uri"], cfg.encode.tmp_dir) as path:
            p = probe(path, item["kind"])
            if p.error:
                return fail(p.error, p.detail)
            if cfg.hash_sources:
                source["sha256"] = sha256_file(path)
            windows = []
            if item["kind"] == "video":
                windows = plan_windows(p.frames, cfg.clips, seed=cfg.seed, source_id=item["id"])
                if not windows:
                    return fail("too_short", f"{p.frames} frames < {min(cfg.clips.lengths)} (clips.pad_short is "
                                             f"{cfg.clips.pad_short}): {item['uri']}")
            scale = choose_bucket(p.width, p.height, cfg.buckets.scales, cfg.buckets.max_upscale)
            if scale is None:
                return fail("too_small", f"{p.width}x{p.height} cannot fill any bucket without upscaling more "
                                         f"than {cfg.buckets.max_upscale}x: {item['uri']}")
            crop = center_crop(p.width, p.height, *scale)
            split = split_of(item["id"], cfg.seed, cfg.shards.val_fraction)
            base = dict(source_id=item["id"], uri=item["uri"], kind=item["kind"], fps=round(p.fps, 6),
                        src_width=p.width, src_height=p.height, bucket=bucket_name(scale), split=split,
                        caption=item["caption"], sha256=source["sha256"])
            stem = safe_key(item["id"])
            clips, errors = [], []
            if item["kind"] == "image":
                out = encode_image(path, crop, cfg.encode, os.path.join(tmp, f"{stem}_000000.jpg"))
                clips.append({**base, "key": f"{stem}_000000", "start": 0, "frames": 1, "length": 16,
                              "ext": "jpg", "file": out.path, "bytes": os.path.getsize(out.path)})
            else:
                encoded = encode_video(path, windows, crop, p.fps, cfg.encode, tmp)
                for w, e in zip(windows, encoded):
                    key = f"{stem}_{w.start:06d}"
                    if e is None:
                        errors.append(_error(item, "decode_failed", f"clip at frame {w.start} ({w.frames} frames) "
                                                                    f"could not be decoded in full: {item['uri']}"))
                        continue
                    dst = os.path.join(tmp, f"{key}.mp4")
                    os.replace(e.path, dst)
                    clips.append({**base, "key": key, "start": w.start, "frames": w.frames, "length": w.length,
                                  "ext": "mp4", "file": dst, "bytes": os.path.getsize(dst)})
                if not clips:
                    source["status"] = "decode_failed"
    except EncodeError as e:
        return fail("encode_failed", str(e))
    except (OSError, storage.StorageError) as e:
        return fail("download_failed", f"{storage.redact(item['uri'])}: {e}")
    except Exception as e:  # noqa: BLE001 - a bad input never kills the Ray task (and every rerun with it)
        return fail("internal_error", f"{storage.redact(item['uri'])}: {type(e).__name__}: {e}")
    source["clips"] = len(clips)
    return {"source": source, "clips": clips, "errors": errors}


def process_sources_batch(batch: dict, cfg: dict, work_dir: str, env: dict) -> dict:
    """Ray Data ``map_batches`` function: rows of json-encoded groups of source items -> one json result per source."""
    storage.apply_env(env)
    config = shard_config_from_dict(cfg)
    results = [json.dumps(process_source(item, config, work_dir))
               for group in batch["items"] for item in json.loads(group)]
    return {"result": np.array(results, dtype=object)}


# ----------------------------------------------------------------------------------------------
# Stage 2: planned shard -> tar + manifest


class _HashingWriter:
    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b: bytes) -> int:
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


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


def _add_sample(tw: tarfile.TarFile, key: str, members: dict[str, bytes | str]) -> None:
    """Append one webdataset sample: ``{key}.{ext}`` members in sorted ext order, reproducible headers.

    Byte-identical to ``webdataset.TarWriter(encoder=False, mtime=0, user="pvq", group="pvq")``
    (tested), without importing webdataset, which imports torch (~0.8 s in every shard job).
    """
    for ext in sorted(members):
        data = members[ext].encode() if isinstance(members[ext], str) else members[ext]
        ti = tarfile.TarInfo(f"{key}.{ext}")
        ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), 0.0, 0o444, "pvq", "pvq"
        tw.addfile(ti, io.BytesIO(data))


def write_shard(plan: dict, out: str, version: str) -> dict:
    """Write one planned shard (skipped if its manifest already exists); returns its index row."""
    rel = f"{version}/{plan['bucket']}/{plan['split']}-{plan['index']:06d}"
    tar_uri, man_uri = storage.join(out, rel + ".tar"), storage.join(out, rel + ".parquet")
    if storage.exists(man_uri) and storage.exists(tar_uri):  # done by an earlier run
        rows = manifest.read_table(man_uri)
        sha = hashlib.sha256(storage.read_bytes(tar_uri)).hexdigest()
        return {"shard": rel + ".tar", "bucket": plan["bucket"], "split": plan["split"], "count": len(rows),
                "bytes": sum(r["bytes"] for r in rows), "sha256": sha, "version": version}
    rows = []
    with storage.atomic_write(tar_uri) as f:
        hw = _HashingWriter(f)
        with tarfile.open(fileobj=hw, mode="w|") as tw:
            for c in plan["samples"]:
                with open(c["path"], "rb") as media:
                    data = media.read()
                _add_sample(tw, c["key"], {c["ext"]: data, "json": manifest.sample_json(c)})
                rows.append({**c, "bytes": len(data), "shard": rel + ".tar"})
    manifest.write_table(man_uri, rows, manifest.SAMPLE_SCHEMA)
    return {"shard": rel + ".tar", "bucket": plan["bucket"], "split": plan["split"], "count": len(rows),
            "bytes": sum(r["bytes"] for r in rows), "sha256": hw.h.hexdigest(), "version": version}


def _write_all(plans: list[dict], out: str, version: str, progress: Callable[[int], None] | None,
               threads: int = 4) -> list[dict]:
    """Write the planned shards from the driver with a few threads.

    Packing is I/O only (read cached clips, write/upload the tar), so threads suffice; this saves a
    second Ray Data executor start (1-2 s) and keeps the node-local work cache readable.
    """
    def one(plan: dict) -> dict:
        row = write_shard(plan, out, version)
        if progress:
            progress(1)
        return row

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, plans))


# ----------------------------------------------------------------------------------------------
# Driver


def host_allowed(uri: str, allowed: list[str]) -> bool:
    """Whether an http(s) ``uri`` may be fetched under ``allowed_hosts`` (empty: any host)."""
    from urllib.parse import urlsplit

    if not allowed or not uri.lower().startswith(("http://", "https://")):
        return True
    u = urlsplit(uri)
    host = (u.hostname or "").lower()
    names = {a.lower() for a in allowed}
    return host in names or (u.port is not None and f"{host}:{u.port}" in names)


def check_hosts(items: list[SourceItem], cfg: ShardConfig) -> list[SourceItem]:
    """Turn sources on hosts outside ``cfg.allowed_hosts`` into ``host_not_allowed`` items (no request made)."""
    out = []
    for it in items:
        if it.error is None and not host_allowed(it.uri, cfg.allowed_hosts):
            it = SourceItem(it.id, it.uri, it.caption, it.kind, "host_not_allowed",
                            f"{storage.redact(it.uri)}: host not in allowed_hosts {cfg.allowed_hosts}")
        out.append(it)
    return out


def _stat_item(it: SourceItem) -> dict:
    d = it.to_dict()
    d.update(size=-1, version="")
    if it.error is None:
        try:
            d.update(storage.info(it.uri))
        except Exception:  # noqa: BLE001 - any failure to stat is a missing source, recorded per item
            pass
    return d


def stat_sources(items: list[SourceItem]) -> list[dict]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(_stat_item, items))


def _work_dir(out: str, version: str, cfg: ShardConfig) -> str:
    if not storage.is_remote(out):
        return os.path.join(storage.strip_file(out), "_work", version)
    tag = hashlib.sha1(out.encode()).hexdigest()[:12]
    return os.path.join(storage.scratch_dir(cfg.encode.tmp_dir), "pvq-shard-work", tag, version)


def task_groups(n: int, per_task: int, slots: int) -> list[int]:
    """Sizes of the consecutive groups of ``n`` cost-sorted sources that become Ray tasks.

    Guided self-scheduling: each group takes about 1/(2 x slots) of what is left, at most
    ``per_task`` and at least 1, so the early tasks amortise the per-task overhead and the last
    ones are single (small) sources that fill the idle slots at the end instead of leaving one
    slot busy with a large group while the others wait.
    """
    sizes, left = [], n
    while left > 0:
        g = max(1, min(per_task, -(-left // (2 * max(1, slots)))))
        sizes.append(g)
        left -= g
    return sizes


def _run_ray(rows: list, fn: Callable, key: str, per_task: int, fn_kwargs: dict,
             progress: Callable[[int], None] | None) -> list[dict]:
    import ray

    if not rows:
        return []
    slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
    groups, i = [], 0
    for g in task_groups(len(rows), per_task, slots):
        groups.append({key: json.dumps(rows[i:i + g])})
        i += g
    ds = ray.data.from_items(groups, override_num_blocks=len(groups))
    ds = ds.map_batches(fn, batch_size=1, fn_kwargs=fn_kwargs, batch_format="numpy")
    out = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for r in batch[next(iter(batch))]:
            out.append(json.loads(r))
            if progress:
                progress(1)
    return out


def inputs_fingerprint(items: list[dict]) -> str:
    """Hash of the listed inputs: every item's id, uri, caption, size and mtime/ETag (or its error)."""
    h = hashlib.sha256()
    for i in sorted(items, key=lambda i: (i["id"], i["uri"])):
        h.update(json.dumps([i["id"], i["uri"], i.get("caption", ""), i.get("size"), i.get("version"),
                             i.get("error")]).encode() + b"\n")
    return h.hexdigest()


def _job_id(cfg: ShardConfig, sources: list[str], parent: str | None, items: list[dict]) -> dict:
    return {"fingerprint": cfg.fingerprint(), "sources": list(sources), "parent": parent,
            "maxcount": cfg.shards.maxcount, "maxsize": cfg.shards.maxsize,
            "val_fraction": cfg.shards.val_fraction,
            "inputs": {"count": len(items), "sha256": inputs_fingerprint(items)}}


def _start_version(out: str, job: dict, version: str) -> None:
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


def _extract_carried(samples: list[dict], out: str, dest: str) -> list[dict]:
    """Copy the media of kept samples out of their old tars into ``dest`` (for repacking)."""
    os.makedirs(dest, exist_ok=True)
    by_shard: dict[str, dict[str, dict]] = defaultdict(dict)
    for s in samples:
        by_shard[s["shard"]][s["key"]] = s
    result = []
    for shard, keep in sorted(by_shard.items()):
        with storage.open_read(storage.join(out, shard)) as f, tarfile.open(fileobj=f, mode="r|") as tf:
            for m in tf:
                key, _, ext = m.name.partition(".")
                if key in keep and ext == keep[key]["ext"]:
                    path = os.path.join(dest, m.name)
                    with open(path, "wb") as g:
                        g.write(tf.extractfile(m).read())
                    result.append({**keep[key], "path": path})
    return result


def _finish(out: str, version: str, cfg: ShardConfig, plans: list[dict], kept_shards: list[dict],
            kept_samples: list[dict], sources: list[dict], errors: list[dict], t0: float, t_encode: float,
            n_processed: int, progress: Callable | None, parent: str | None, extra: dict | None = None) -> dict:
    new_rows = _write_all(plans, out, version, progress)
    shards = sorted(kept_shards + new_rows, key=lambda r: (r["bucket"], r["split"], r["shard"]))
    samples = [{k: v for k, v in s.items() if k not in ("path", "file")} for s in kept_samples]
    for p in plans:
        rel = f"{version}/{p['bucket']}/{p['split']}-{p['index']:06d}.tar"
        for c in p["samples"]:
            samples.append({**{k: v for k, v in c.items() if k not in ("path", "file")}, "shard": rel})
    samples.sort(key=lambda s: (s["bucket"], s["split"], s["key"]))
    errors = sorted(errors, key=lambda e: (e["source_id"], e["reason"], e["detail"]))
    sources = sorted(sources, key=lambda s: s["id"])
    wall = time.time() - t0
    stats = {
        "version": version, "parent": parent, "config_fingerprint": cfg.fingerprint(),
        "samples": len(samples), "shards": len(shards),
        "clips_per_bucket": dict(sorted(Counter(s["bucket"] for s in samples).items())),
        "clips_per_length": {str(k): v for k, v in sorted(Counter(s["length"] for s in samples).items())},
        "clips_per_split": dict(sorted(Counter(s["split"] for s in samples).items())),
        "clips_per_kind": dict(sorted(Counter(s["kind"] for s in samples).items())),
        "sources": len(sources), "sources_processed": n_processed,
        "errors": len(errors), "errors_by_reason": dict(sorted(Counter(e["reason"] for e in errors).items())),
        "new_samples": sum(len(p["samples"]) for p in plans),
        "wall_s": round(wall, 3), "encode_s": round(t_encode, 3),
        "clips_per_s": round(sum(len(p["samples"]) for p in plans) / wall, 3) if wall > 0 else 0.0,
        **(extra or {}),
    }
    base = storage.join(out, version)
    manifest.write_table(storage.join(base, "samples.parquet"), samples, manifest.SAMPLE_SCHEMA)
    manifest.write_table(storage.join(base, "sources.parquet"), sources, manifest.SOURCE_SCHEMA)
    manifest.write_table(storage.join(base, "errors.parquet"), errors, manifest.ERROR_SCHEMA)
    storage.write_bytes(storage.join(base, "_stats.json"), json.dumps(stats, indent=1, sort_keys=True).encode())
    manifest.write_table(storage.join(base, "index.parquet"), shards, manifest.SHARD_SCHEMA)  # completes it
    storage.write_bytes(storage.join(out, "LATEST"), (version + "\n").encode())
    return stats


def _encode_stage(items: list[dict], cfg: ShardConfig, work_dir: str, progress: Callable | None
                  ) -> tuple[list[dict], list[dict], list[dict]]:
    # largest first (by bytes): the long encodes start early and the short ones fill the tail
    items = sorted(items, key=lambda i: -max(i.get("size", 0), 0))
    results = _run_ray(items, process_sources_batch, "items", cfg.ray.sources_per_task,
                       {"cfg": cfg.to_dict(), "work_dir": work_dir, "env": storage.s3_env()}, progress)
    clips, sources, errors = [], [], []
    for r in results:
        for c in r["clips"]:
            clips.append({**c, "path": os.path.join(r["cache"], c["file"])})
        sources.append(r["source"])
        errors.extend(r["errors"])
    return clips, sources, errors


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
    items = stat_sources(check_hosts(list_sources(sources, exclude=[out]), cfg))
    version = manifest.version_name(1)
    _start_version(out, _job_id(cfg, sources, None, items), version)
    storage.remove_temporaries(storage.join(out, version))
    ensure_ray(cfg)
    work = _work_dir(out, version, cfg)
    te = time.time()
    clips, srcs, errors = _encode_stage(items, cfg, work, progress and progress("sources", len(items)))
    t_encode = time.time() - te
    plans = plan_shards(clips, cfg)
    stats = _finish(out, version, cfg, plans, [], [], srcs, errors, t0, t_encode, len(items),
                    progress and progress("shards", len(plans)), None)
    if not keep_work:
        _drop_work(work)
    return JobResult(out, version, True, f"wrote {version}: {stats['samples']} samples in {stats['shards']} "
                                         f"shards, {stats['errors']} errors", stats)


def _drop_work(work: str) -> None:
    shutil.rmtree(work, ignore_errors=True)
    try:
        os.removedirs(os.path.dirname(work))  # the now empty _work / pvq-shard-work/<tag> folders
    except OSError:
        pass


def _changed(old: dict, new: dict, tmp_dir: str) -> bool:
    if old["uri"] != new["uri"] or old["caption"] != new["caption"] or old["kind"] != new["kind"]:
        return True
    if old["size"] != new["size"]:
        return True
    if old["version"] == new["version"]:
        return False
    if new["size"] < 0 or not old.get("sha256"):  # missing both times / no hash to compare
        return new["size"] >= 0
    try:
        with storage.local_copy(new["uri"], tmp_dir) as path:
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
    items = stat_sources(check_hosts(list_sources(sources, exclude=[out]), cfg))
    old_sources = {s["id"]: s for s in prev["sources"]}
    new_by_id = {i["id"]: i for i in items}
    changed = {i["id"] for i in items
               if i["id"] in old_sources and _changed(old_sources[i["id"]], i, cfg.encode.tmp_dir)}
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
    _start_version(out, _job_id(cfg, sources, prev["version"], items), version)
    storage.remove_temporaries(storage.join(out, version))
    ensure_ray(cfg)
    work = _work_dir(out, version, cfg)
    gone = changed | removed
    affected = {s["shard"] for s in prev["samples"] if s["source_id"] in gone}
    kept_shards = [s for s in prev["shards"] if s["shard"] not in affected]
    kept_samples = [s for s in prev["samples"] if s["shard"] not in affected]
    carried = _extract_carried([s for s in prev["samples"] if s["shard"] in affected and s["source_id"] not in gone],
                               out, os.path.join(work, "carried"))
    todo = [i for i in items if i["id"] in changed | added]
    te = time.time()
    clips, new_srcs, new_errors = _encode_stage(todo, cfg, work, progress and progress("sources", len(todo)))
    t_encode = time.time() - te
    next_index: dict[tuple[str, str], int] = defaultdict(int)
    for s in prev["shards"]:
        n = int(s["shard"].rsplit("-", 1)[1].split(".")[0])
        next_index[(s["bucket"], s["split"])] = max(next_index[(s["bucket"], s["split"])], n + 1)
    plans = plan_shards(carried + clips, cfg, next_index)
    todo_ids = {i["id"] for i in todo}
    srcs = [s for s in prev["sources"] if s["id"] in new_by_id and s["id"] not in todo_ids]
    for s in srcs:  # carry the stat of unchanged sources forward (mtime may have moved, hash equal)
        s.update(size=new_by_id[s["id"]]["size"], version=new_by_id[s["id"]]["version"])
    srcs += new_srcs
    errors = [e for e in prev["errors"] if e["source_id"] in new_by_id and e["source_id"] not in todo_ids]
    errors += new_errors
    stats = _finish(out, version, cfg, plans, kept_shards, kept_samples, srcs, errors, t0, t_encode, len(todo),
                    progress and progress("shards", len(plans)), prev["version"],
                    {"added": len(added), "changed": len(changed), "removed": len(removed)})
    if not keep_work:
        _drop_work(work)
    return JobResult(out, version, True, f"wrote {version}: +{len(added)} new, {len(changed)} changed, "
                                         f"-{len(removed)} removed sources; {stats['samples']} samples", stats)
