"""Dataset layout, parquet manifests (pyarrow) and the sample json.

```
OUT/
  LATEST                       name of the newest complete version ("v000002")
  v000001/
    _job.json                  what this version is built from (for resume); written first
    {bucket}/{split}-{shard:06d}.tar       webdataset shard (mp4 or jpg + json per sample)
    {bucket}/{split}-{shard:06d}.parquet   its manifest: one row per sample
    samples.parquet            dataset-level index: every sample of this version (with its shard)
    index.parquet              every shard of this version (path relative to OUT, count, bytes, sha256)
    sources.parquet            every source with its size/version/sha256 and status (for refresh)
    errors.parquet             one row per bad input: source id, uri, reason, detail
    _stats.json                clips per bucket / length / split, errors by reason, throughput
```

A version is complete once ``index.parquet`` exists; ``LATEST`` is updated after that. A refresh's
version lists unchanged shards of older versions by their path, so old versions stay readable.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from data_prep import storage

SAMPLE_SCHEMA = pa.schema([
    ("key", pa.string()), ("source_id", pa.string()), ("uri", pa.string()), ("kind", pa.string()),
    ("start", pa.int64()), ("frames", pa.int64()), ("length", pa.int64()), ("fps", pa.float64()),
    ("src_width", pa.int64()), ("src_height", pa.int64()), ("bucket", pa.string()), ("split", pa.string()),
    ("caption", pa.string()), ("sha256", pa.string()), ("ext", pa.string()), ("bytes", pa.int64()),
    ("shard", pa.string()),
])
SHARD_SCHEMA = pa.schema([
    ("shard", pa.string()), ("bucket", pa.string()), ("split", pa.string()), ("count", pa.int64()),
    ("bytes", pa.int64()), ("sha256", pa.string()), ("version", pa.string()),
])
SOURCE_SCHEMA = pa.schema([
    ("id", pa.string()), ("uri", pa.string()), ("kind", pa.string()), ("caption", pa.string()),
    ("size", pa.int64()), ("version", pa.string()), ("sha256", pa.string()), ("status", pa.string()),
    ("clips", pa.int64()),
])
ERROR_SCHEMA = pa.schema([
    ("source_id", pa.string()), ("uri", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
])
JSON_FIELDS = ("key", "source_id", "uri", "kind", "start", "frames", "length", "fps", "bucket", "split",
               "caption", "sha256", "src_width", "src_height")


REDACTED_FIELDS = ("uri", "detail")
"""Stored with :func:`storage.redact` applied: a source URI's password or token never reaches a
manifest or a sample json (it stays in the source list the job reads, or in the environment)."""


def warm_up() -> None:
    """Load what the first :func:`write_table` loads: pyarrow imports pandas on its first array
    (~0.35 s), which a job can do in a thread while its sources encode."""
    pa.array([], type=pa.string())


def sample_json(meta: dict) -> bytes:
    """The ``json`` member of a sample: a fixed set of fields, sorted, so it is reproducible."""
    return json.dumps({k: storage.redact(meta[k]) if k in REDACTED_FIELDS else meta[k] for k in JSON_FIELDS},
                      sort_keys=True, ensure_ascii=False).encode()


def version_name(n: int) -> str:
    return f"v{n:06d}"


def version_number(name: str) -> int:
    return int(name.lstrip("v"))


def latest_version(out: str) -> str | None:
    uri = storage.join(out, "LATEST")
    return storage.read_text(uri).strip() if storage.exists(uri) else None


def versions(out: str) -> list[str]:
    """All version folders under ``out`` (complete or not), sorted."""
    if not storage.exists(out):
        return []
    fs, p = storage.fs_of(out)
    names = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=False)]
    return sorted(n for n in names if len(n) == 7 and n[0] == "v" and n[1:].isdigit())


def is_complete(out: str, version: str) -> bool:
    return storage.exists(storage.join(out, version, "index.parquet"))


def write_table(uri: str, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist([{f.name: storage.redact(r.get(f.name)) if f.name in REDACTED_FIELDS else r.get(f.name)
                                   for f in schema} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())


def read_table(uri: str) -> list[dict]:
    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()


def read_version(out: str, version: str | None = None) -> dict:
    """``{"version", "shards", "samples", "sources", "errors", "stats"}`` of a complete version."""
    version = version or latest_version(out)
    if version is None:
        raise FileNotFoundError(f"{out}: no dataset here (no LATEST file); run `pvq data shard` first")
    base = storage.join(out, version)
    if not is_complete(out, version):
        raise FileNotFoundError(f"{base}: version is incomplete (no index.parquet); rerun the job to finish it")
    return {
        "version": version,
        "shards": read_table(storage.join(base, "index.parquet")),
        "samples": read_table(storage.join(base, "samples.parquet")),
        "sources": read_table(storage.join(base, "sources.parquet")),
        "errors": read_table(storage.join(base, "errors.parquet")),
        "stats": json.loads(storage.read_text(storage.join(base, "_stats.json"))),
    }
