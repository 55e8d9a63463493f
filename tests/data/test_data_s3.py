"""The same job against a real S3 API (moto server on 127.0.0.1): sources and output on s3://."""

from __future__ import annotations

import tarfile

import pytest

from data_prep import manifest, storage
from data_prep.loader import ShardLoader
from data_prep.shard import refresh, shard
from data_prep.sources import SourceError

pytestmark = pytest.mark.slow


def _members(uri: str) -> dict[str, bytes]:
    with storage.open_read(uri) as f, tarfile.open(fileobj=f, mode="r|") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if not m.name.endswith(".json")}


def test_shard_from_and_to_s3_matches_local(demo, demo_cfg, ray_cluster, s3_server, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="shards")
    for p in sorted(demo.root.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), "raw", f"demo/{p.relative_to(demo.root)}")
    sources = ["s3://raw/demo/webvid.csv", "s3://raw/demo/captions_demo.json"]
    cfg = demo_cfg()
    r = shard(sources, "s3://shards/ds", cfg)
    local = tmp_path / "local"
    rl = shard([str(demo.csv), str(demo.coco_json)], str(local), cfg)
    assert (r.stats["samples"], r.stats["shards"], r.stats["errors_by_reason"]) == \
           (rl.stats["samples"], rl.stats["shards"], rl.stats["errors_by_reason"])
    v, vl = manifest.read_version("s3://shards/ds"), manifest.read_version(str(local))
    assert all(s["uri"].startswith("s3://raw/demo/") for s in v["samples"])
    assert [(s["key"], s["bucket"], s["split"], s["sha256"]) for s in v["samples"]] == \
           [(s["key"], s["bucket"], s["split"], s["sha256"]) for s in vl["samples"]]
    # the encoded media are byte-identical whatever the storage
    for row, row_l in zip(v["shards"], vl["shards"]):
        assert row["shard"] == row_l["shard"]
        assert _members(f"s3://shards/ds/{row['shard']}") == _members(str(local / row_l["shard"]))
    listed = s3.list_objects_v2(Bucket="shards", Prefix="ds/")["Contents"]
    assert not [o["Key"] for o in listed if ".tmp-" in o["Key"]]
    # refresh with no change writes nothing; the loader reads straight from S3
    assert not refresh(sources, "s3://shards/ds", cfg).wrote
    batch = next(iter(ShardLoader("s3://shards/ds", batch_size=1, frames=[16], steps=1)))
    assert batch["video"].shape[:3] == (1, 3, 16)


def test_wrong_s3_paths_are_clear_errors(s3_server):
    with pytest.raises(SourceError, match="source not found: s3://no-such-bucket/x.csv"):
        shard_sources = ["s3://no-such-bucket/x.csv"]
        from data_prep.sources import list_sources

        list_sources(shard_sources)
    with pytest.raises(FileNotFoundError, match="no dataset here"):
        manifest.read_version("s3://no-such-bucket/ds")
