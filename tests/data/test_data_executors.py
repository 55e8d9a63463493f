"""The shard job's two executors (issue 15): the local process pool and Ray write the same bytes;
which one ``executor: auto`` picks; a worker that dies becomes an error row; a no-change refresh of
a generated dataset reads no source file."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from data_prep import manifest
from data_prep import shard as job
from data_prep.local_runtime import pick_executor, ray_running, run_local
from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import shard_throughput  # noqa: E402

pytestmark = pytest.mark.slow


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".tar", ".parquet")}


def test_local_pool_and_ray_write_identical_shards(demo, demo_cfg, ray_cluster, tmp_path):
    sources = [str(demo.csv), str(demo.coco_json)]
    stats = {}
    for ex in ("local", "ray"):
        r = job.shard(sources, str(tmp_path / ex), demo_cfg(f"executor={ex}"))
        stats[ex] = r.stats
    assert stats["local"]["executor"] == "local" and stats["ray"]["executor"] == "ray"
    local, ray = _files(tmp_path / "local" / "v000001"), _files(tmp_path / "ray" / "v000001")
    assert sum(k.endswith(".tar") for k in local) == stats["ray"]["shards"] > 1
    assert local == ray  # every tar and manifest, byte for byte
    assert stats["local"]["errors_by_reason"] == stats["ray"]["errors_by_reason"] and stats["ray"]["errors"] > 0


def test_auto_takes_ray_for_an_address_a_running_ray_or_a_large_job(demo_cfg):
    cfg = demo_cfg()
    assert cfg.executor == "auto" and cfg.local_max_sources == 500
    assert pick_executor(cfg, 500) == ("ray" if ray_running() else "local")
    assert pick_executor(cfg, 501) == "ray"
    assert pick_executor(demo_cfg("ray.address=auto"), 1) == "ray"
    assert pick_executor(demo_cfg("executor=local"), 10_000) == "local"
    assert pick_executor(demo_cfg("executor=ray"), 1) == "ray"
    from pvq_common.config import ConfigError

    with pytest.raises(ConfigError, match="executor: 'local' runs on this machine only"):
        demo_cfg("executor=local", "ray.address=auto")
    with pytest.raises(ConfigError, match="executor: 'remote'"):
        demo_cfg("executor=remote")


def _dies_on(batch, bad: str) -> dict:
    """A map_batches function over rows ``{"name": ...}``: its worker process exits on row ``bad``."""
    import json

    import numpy as np

    rows = [r for g in batch["items"] for r in json.loads(g)]
    if any(r["name"] == bad for r in rows):
        os._exit(3)
    return {"result": np.array([json.dumps({"name": r["name"], "pid": os.getpid()}) for r in rows], dtype=object)}


def test_a_dying_worker_costs_only_its_own_row():
    rows = [{"name": f"r{i}"} for i in range(9)]
    out = run_local(rows, _dies_on, "items", 4, {"bad": "r1"}, 2, None,
                    lambda row: {"name": row["name"], "crashed": True})
    assert sorted(r["name"] for r in out) == [f"r{i}" for i in range(9)]
    assert [r["name"] for r in out if r.get("crashed")] == ["r1"]
    assert all(r["pid"] != os.getpid() for r in out if not r.get("crashed"))


def test_no_change_refresh_reads_no_source(tmp_path, monkeypatch):
    """A generated dataset of 400 sources: a no-change refresh stats every file and opens none (no
    probe, no hash); a touched file (mtime moved, same bytes) is hashed, alone, and nothing is written."""
    from data_prep.config import load_shard_config

    cfg = load_shard_config(ROOT / "configs" / "shard" / "default.yaml",
                            ["clips.lengths=[16]", "buckets.scales=[[64,64]]", "shards.val_fraction=0.0"])
    csv, out = shard_throughput.make_refresh_dataset(tmp_path, 400, cfg)
    v1 = manifest.read_version(str(out))
    assert len(v1["sources"]) == len(v1["samples"]) == 400 and v1["stats"]["shards"] == 1
    hashed: list[str] = []
    real_hash = job.sha256_file

    def spy_hash(path):
        hashed.append(path)
        return real_hash(path)

    def no_probe(*a, **k):
        raise AssertionError("a no-change refresh must not probe")

    monkeypatch.setattr(job, "sha256_file", spy_hash)
    monkeypatch.setattr("data_prep.transform.probe", no_probe)
    t = time.perf_counter()
    r = job.refresh([str(csv)], str(out), cfg)
    assert time.perf_counter() - t < 10
    assert not r.wrote and "nothing written" in r.message and hashed == []
    touched = tmp_path / "videos" / "v0000007.mp4"
    st = touched.stat()
    os.utime(touched, (st.st_atime, st.st_mtime + 5))
    r = job.refresh([str(csv)], str(out), cfg)
    assert not r.wrote and hashed == [str(touched)]
    assert manifest.latest_version(str(out)) == "v000001"


def test_cold_and_refresh_modes_of_the_benchmark(tmp_path):
    """benchmarks/shard_throughput.py --cold and --refresh at toy sizes: their JSON carries the numbers."""
    import json
    import subprocess

    script = ROOT / "benchmarks" / "shard_throughput.py"
    media = ROOT.parent / "shared" / "media" / "videos"
    videos = ["--videos", str(media)] if media.is_dir() else []
    r = subprocess.run([sys.executable, str(script), "--cold", *videos, "--cold-videos", "2", "--cold-clips", "1",
                        "--repeats", "1", "--json", str(tmp_path / "cold.json")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    cold = json.loads((tmp_path / "cold.json").read_text())
    assert cold["videos"] == 2 and cold["clips"] == 2
    assert cold["ffmpeg_best"]["threads"] in (0, 1) and cold["pvq_best"]["threads"] in (0, 1)
    assert cold["ratio"] == pytest.approx(cold["ffmpeg_best"]["s"] / cold["pvq_best"]["s"], rel=0.01)
    assert 0 < cold["ratio"] < 5 and "(target >= 0.60)" in r.stdout
    r = subprocess.run([sys.executable, str(script), "--refresh", "200", "--repeats", "1",
                        "--json", str(tmp_path / "refresh.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "refresh.json").read_text())
    assert res["sources"] == res["samples"] == 200 and 0 < res["median_refresh_s"] < 10



def test_s3_folder_sources_are_stated_by_their_listing(s3_server, tmp_path, monkeypatch):
    """An S3 folder's objects get size and ETag from the LIST responses (equal to a HEAD's), so a
    refresh of a large S3 folder asks for no object one by one; CSV rows are still stat'ed each."""
    import boto3

    from data_prep import sources, storage

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="listed")
    for i in range(5):
        s3.put_object(Bucket="listed", Key=f"raw/sub{i % 2}/v{i}.mp4", Body=b"x" * (10 + i))
    s3.put_object(Bucket="listed", Key="raw/list.csv",
                  Body=b"videoid,contentUrl,duration,page_dir,name\n7,sub0/v0.mp4,PT1S,d,row\n")
    heads: list[str] = []
    real_info = storage.info

    def spy_info(uri, *args):
        heads.append(uri)
        return real_info(uri, *args)

    items = sources.list_sources(["s3://listed/raw"])
    assert [i.uri for i in items] == [f"s3://listed/raw/sub{i % 2}/v{i}.mp4" for i in (0, 2, 4, 1, 3)]
    monkeypatch.setattr(storage, "info", spy_info)
    stated = sources.stat_sources(items)
    assert heads == []
    assert [{k: s[k] for k in ("size", "version")} for s in stated] == [real_info(i.uri) for i in items]
    assert [s["size"] for s in stated] == [10, 12, 14, 11, 13] and all(len(s["version"]) == 32 for s in stated)
    row = sources.stat_sources(sources.list_sources(["s3://listed/raw/list.csv"]))
    assert heads == ["s3://listed/raw/sub0/v0.mp4"] and row[0]["version"] == stated[0]["version"]


KILL_SCRIPT = """
import sys
from data_prep.config import load_shard_config
from data_prep.shard import shard
shard(sys.argv[2].split(","), sys.argv[3], load_shard_config(sys.argv[1], sys.argv[4:]))
"""


def test_kill_minus_9_of_a_local_job_frees_its_output_at_once(demo, demo_cfg, ray_cluster, tmp_path):
    """The local pool's workers die with the driver (they share its flock on OUT/.lock): a rerun right
    after ``kill -9`` is not refused, resumes from the work cache and gives the uninterrupted dataset."""
    import signal
    import subprocess

    overrides = ["shards.maxcount=1", "clips.lengths=[16]", "executor=local"]
    sources = [str(demo.csv), str(demo.coco_json)]
    out = tmp_path / "killed"
    cache = out / "_work" / "v000001" / "sources"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(ROOT / "configs" / "shard" / "demo.yaml"),
                             ",".join(sources), str(out), *overrides],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (
            cache.is_dir() and any(not p.name.startswith(".") for p in cache.iterdir())):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the job finished before it could be killed"
    cfg = demo_cfg(*overrides)
    r = job.shard(sources, str(out), cfg)  # at once: no worker of the killed job holds the lock
    assert r.stats["executor"] == "local" and not (out / "_work").exists()
    reference = job.shard(sources, str(tmp_path / "reference"), demo_cfg(*overrides[:2], "executor=ray"))
    assert _files(out / "v000001") == _files(tmp_path / "reference" / "v000001")
    assert r.stats["samples"] == reference.stats["samples"] > 0


def test_lock_holder_liveness_reads_the_lock_text():
    """A lock whose driver is dead on this host is waited for (its workers are exiting); a live
    holder, one on another host or unparsable text is treated as a running job."""
    import subprocess

    from data_prep.shard import _holder_alive

    host = os.uname().nodename
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert _holder_alive(f"pid {os.getpid()} on {host}, since 2026-12-01 10:00:00")
    assert not _holder_alive(f"pid {dead.pid} on {host}, since 2026-12-01 10:00:00")
    assert _holder_alive(f"pid {dead.pid} on other-{host}, since 2026-12-01 10:00:00")
    assert _holder_alive("unknown")
