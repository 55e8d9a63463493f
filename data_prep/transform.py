"""Stage 1 of the shard job, per source: download if remote, probe, sha256, plan clip windows, pick
the bucket and the split, then one ffmpeg cuts and encodes all its clips into a local work cache.

Each source gets one folder in the cache, renamed into place when complete, so a killed job resumes
without redoing finished sources. Only small metadata goes back to the driver. A bad input never
raises: every failure becomes an error row with a reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import threading
import uuid
from typing import Callable

import numpy as np

from data_prep import storage
from data_prep.buckets import bucket_name, center_crop, choose_bucket
from data_prep.clips import plan_windows, split_of
from data_prep.config import ShardConfig, shard_config_from_dict
from data_prep.encode import EncodeError, encode_image, encode_video
from data_prep.local_runtime import run_local
from data_prep.probe import probe, sha256_file
from data_prep.ray_runtime import ensure_ray, run_ray
from pvq_common.env import scoped_env


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
    shared = storage.is_remote(work_dir)  # a cluster's cache on the object store (versions.work_dir)
    final = storage.join(work_dir, "sources", _cache_name(item, cfg.fingerprint()))
    meta_path = storage.join(final, "meta.json")
    if storage.exists(meta_path) if shared else os.path.exists(meta_path):  # an earlier (killed) run, any node
        return {**json.loads(storage.read_bytes(meta_path)), "cache": final, "reused": True}
    if item.get("size", 0) < 0:
        return {"source": {**source, "status": "missing"}, "clips": [],
                "errors": [_error(item, "missing", f"no such file: {item['uri']}")]}
    local = os.path.join(storage.scratch_dir(cfg.encode.tmp_dir), "pvq-shard-work") if shared else work_dir
    tmp = os.path.join(local, "sources", f".tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp, exist_ok=True)
    try:
        result = _process_into(item, source, cfg, tmp)
        for c in result["clips"]:
            c["file"] = os.path.basename(c["file"])
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(result, f, sort_keys=True)
        if shared:
            _publish(tmp, final)
        elif os.path.exists(final):  # a concurrent duplicate finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
        return {**result, "cache": final}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(folder: str, uri: str) -> None:
    """Upload a finished source's folder to the shared work cache, ``meta.json`` last: a source
    counts as done on every node only once its meta is there (a node killed mid-upload leaves
    clips without it, which the next run overwrites)."""
    names = sorted(os.listdir(folder), key=lambda n: n == "meta.json")
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            storage.write_bytes(storage.join(uri, name), f.read())


def _process_into(item: dict, source: dict, cfg: ShardConfig, tmp: str) -> dict:
    def fail(reason: str, detail: str) -> dict:
        return {"source": {**source, "status": reason}, "clips": [], "errors": [_error(item, reason, detail)]}

    try:
        with storage.local_copy(item["uri"], cfg.encode.tmp_dir, cfg.allowed_hosts) as path:
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
        refused = storage.host_refusal(e)
        if refused is not None:  # redirected to a host outside allowed_hosts: no request made there
            return fail("host_not_allowed", str(refused))
        return fail("download_failed", f"{storage.redact(item['uri'])}: {e}")
    except Exception as e:  # noqa: BLE001 - a bad input never kills the Ray task (and every rerun with it)
        return fail("internal_error", f"{storage.redact(item['uri'])}: {type(e).__name__}: {e}")
    source["clips"] = len(clips)
    return {"source": source, "clips": clips, "errors": errors}


def process_sources_batch(batch: dict, cfg: dict, work_dir: str, env: dict) -> dict:
    """Ray Data ``map_batches`` function: rows of json-encoded groups of source items -> one json result per source.

    ``env`` holds the driver's S3 settings (:func:`data_prep.storage.s3_env`); they apply while the
    batch runs and the worker's environment is restored after it."""
    config = shard_config_from_dict(cfg)
    ray = sys.modules.get("ray")  # which Ray node ran it (the job's stats); None in the local pool
    node = ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else None
    with scoped_env(env or {}):
        results = [json.dumps({**process_source(item, config, work_dir), "node": node})
                   for group in batch["items"] for item in json.loads(group)]
    return {"result": np.array(results, dtype=object)}


def _crashed(item: dict) -> dict:
    """The result of a source whose worker process died twice while processing it."""
    source = {k: item.get(k) for k in ("id", "uri", "kind", "caption", "size", "version")}
    detail = f"{storage.redact(item['uri'])}: the worker process died while processing it (twice)"
    return {"source": {**source, "sha256": "", "status": "internal_error", "clips": 0}, "clips": [],
            "errors": [_error(item, "internal_error", detail)]}


def _warm_up_manifests() -> None:
    from data_prep import manifest

    manifest.warm_up()


def encode_sources(items: list[dict], cfg: ShardConfig, work_dir: str, progress: Callable | None,
                   executor: str = "ray") -> tuple[list[dict], list[dict], list[dict]]:
    """Run :func:`process_source` over ``items`` as tasks on ``executor`` (``ray``: Ray Data, started
    or joined here; ``local``: :func:`data_prep.local_runtime.run_local`); returns (clips, sources,
    errors), each clip with ``path``: its encoded file in the work cache."""
    # largest first (by bytes): the long encodes start early and the short ones fill the tail
    items = sorted(items, key=lambda i: -max(i.get("size", 0), 0))
    kwargs = {"cfg": cfg.to_dict(), "work_dir": work_dir, "env": storage.s3_env()}
    # the driver waits while the sources encode: meanwhile it imports what writing the manifests
    # needs (pyarrow imports pandas on its first array, ~0.35 s), once the workers exist (forked)
    warm = threading.Thread(target=_warm_up_manifests, daemon=True)
    if executor == "local":
        results = run_local(items, process_sources_batch, "items", cfg.ray.sources_per_task, kwargs,
                            cfg.ray.num_cpus, progress, _crashed, on_start=warm.start)
    else:
        ensure_ray(cfg)
        warm.start()
        results = run_ray(items, process_sources_batch, "items", cfg.ray.sources_per_task, kwargs, progress)
    clips, sources, errors = [], [], []
    for r in results:
        for c in r["clips"]:
            clips.append({**c, "path": os.path.join(r["cache"], c["file"])})
        sources.append({**r["source"], "node": r.get("node"), "reused": r.get("reused", False)})  # stats only
        errors.extend(r["errors"])
    return clips, sources, errors
