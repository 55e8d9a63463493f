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


@pytest.fixture
def s3_with_auth(monkeypatch):
    """A second moto server that checks credentials (IAM on): yields (endpoint, good key id, good secret).

    The first 3 requests are unauthenticated (they create the IAM user, its S3 policy and its key);
    every later request must be signed with a key moto knows and allowed by its policy.
    """
    import json
    import os
    import subprocess
    import sys
    import time

    import boto3
    import requests

    from helpers import free_port

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="data-team")
        iam.put_user_policy(UserName="data-team", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="data-team")["AccessKey"]
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_wrong_s3_credentials_are_clear_errors(demo, demo_cfg, s3_with_auth, monkeypatch):
    import boto3

    from data_prep.storage import StorageError

    endpoint, key_id, secret = s3_with_auth
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret)
    s3.create_bucket(Bucket="raw")
    s3.upload_file(str(demo.csv), "raw", "demo/webvid.csv")

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert storage.exists("s3://raw/demo/webvid.csv")  # the right key works through the same code
    for bad_id, bad_secret in ((key_id, "not-the-secret"), ("AKIAUNKNOWN000000000", secret)):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", bad_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
        with pytest.raises(StorageError, match=r"s3://raw/demo/webvid.csv: .*check AWS_ACCESS_KEY_ID"):
            from data_prep.sources import list_sources

            list_sources(["s3://raw/demo/webvid.csv"])
        with pytest.raises(StorageError, match=r"s3://shards/ds.*check AWS_ACCESS_KEY_ID"):
            shard([str(demo.csv)], "s3://shards/ds", demo_cfg())
