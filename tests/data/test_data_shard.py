"""Integration: the Ray shard job on the generated demo set (local output), kill/resume, refresh."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import decord
import pytest
import torch
import torch.nn.functional as F

from data_prep import manifest
from data_prep.buckets import bucket_name, center_crop, choose_bucket
from data_prep.clips import plan_windows
from data_prep.probe import probe
from data_prep.samples import make_video
from data_prep.shard import ShardJobError, refresh, shard
from helpers import CONFIGS

pytestmark = pytest.mark.slow


def _sources(demo):
    return [str(demo.csv), str(demo.coco_json)]


def _tar_members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".tar", ".parquet") and p.name != "_job.json"}


@pytest.fixture(scope="module")
def built(demo, demo_cfg, ray_cluster, tmp_path_factory):
    import ray

    cfg = demo_cfg("encode.codec=lossless")
    out = tmp_path_factory.mktemp("ds") / "out"
    result = shard(_sources(demo), str(out), cfg)
    # Ray was started by the fixture, not by the job: the job's Ray Data settings still apply
    assert ray.data.DataContext.get_current().op_resource_reservation_enabled is False
    return cfg, out, result


def test_counts_buckets_frames_match_the_probe(demo, built):
    cfg, out, result = built
    v = manifest.read_version(str(out))
    expected = {}
    for video in demo.videos.values():
        p = probe(str(video["path"]))
        scale = choose_bucket(p.width, p.height, cfg.buckets.scales, cfg.buckets.max_upscale)
        for w in plan_windows(p.frames, cfg.clips, seed=cfg.seed, source_id=video["id"]):
            expected[(video["id"], w.start)] = (bucket_name(scale), w.frames, w.length)
    for im in demo.images.values():
        scale = choose_bucket(im["width"], im["height"], cfg.buckets.scales)
        expected[(im["id"], 0)] = (bucket_name(scale), 1, 16)
    got = {(s["source_id"], s["start"]): (s["bucket"], s["frames"], s["length"]) for s in v["samples"]}
    assert got == expected
    assert len(v["samples"]) == len(expected) == result.stats["samples"]
    keys = [s["key"] for s in v["samples"]]
    assert len(keys) == len(set(keys))
    # every shard holds exactly its manifest's samples, mp4/jpg + json, within maxcount
    seen = []
    for row in v["shards"]:
        members = _tar_members(str(out / row["shard"]))
        man = manifest.read_table(str(out / row["shard"].replace(".tar", ".parquet")))
        assert row["count"] == len(man) <= cfg.shards.maxcount
        assert row["sha256"] == hashlib.sha256((out / row["shard"]).read_bytes()).hexdigest()
        assert sorted(members) == sorted([f"{m['key']}.{m['ext']}" for m in man] + [f"{m['key']}.json" for m in man])
        assert row["shard"].startswith(f"{v['version']}/{row['bucket']}/{row['split']}-")
        for m in man:
            meta = json.loads(members[f"{m['key']}.json"])
            assert meta["bucket"] == row["bucket"] and meta["split"] == row["split"]
            assert meta["sha256"] == hashlib.sha256(Path(m["uri"]).read_bytes()).hexdigest()
            assert meta["caption"] and meta["caption"] == m["caption"]
            seen.append(m["key"])
    assert sorted(seen) == sorted(keys)
    st = v["stats"]
    assert st["clips_per_bucket"] == dict(sorted(Counter(b for b, _, _ in expected.values()).items()))
    assert st["clips_per_length"] == {str(k): n for k, n in sorted(Counter(x[2] for x in expected.values()).items())}


def test_bad_inputs_become_error_rows(demo, built):
    _, out, result = built
    v = manifest.read_version(str(out))
    assert {e["source_id"]: e["reason"] for e in v["errors"]} == demo.broken
    assert all(e["detail"] for e in v["errors"])
    assert result.stats["errors_by_reason"] == dict(sorted(Counter(demo.broken.values()).items()))
    status = {s["id"]: s["status"] for s in v["sources"]}
    assert all(status[k] == r for k, r in demo.broken.items())


def test_split_by_source_has_no_leak(built):
    _, out, _ = built
    v = manifest.read_version(str(out))
    by_split = {sp: {s["source_id"] for s in v["samples"] if s["split"] == sp} for sp in ("train", "val")}
    assert by_split["train"] and by_split["val"]
    assert not by_split["train"] & by_split["val"]


def test_decoded_frames_match_the_source_crop(demo, built):
    _, out, _ = built
    v = manifest.read_version(str(out))
    sample = next(s for s in v["samples"] if s["source_id"] == demo.videos["testsrc_wide"]["id"])
    members = _tar_members(str(out / sample["shard"]))
    got = decord.VideoReader(io.BytesIO(members[f"{sample['key']}.mp4"])).get_batch(list(range(sample["frames"])))
    got = torch.from_numpy(got.asnumpy()).permute(0, 3, 1, 2).float()  # (T, C, H, W)
    src = decord.VideoReader(sample["uri"]).get_batch(list(range(sample["start"], sample["start"] + sample["frames"])))
    c = center_crop(sample["src_width"], sample["src_height"], got.shape[3], got.shape[2])
    ref = torch.from_numpy(src.asnumpy()[:, c.y:c.y + c.h, c.x:c.x + c.w]).permute(0, 3, 1, 2).float()
    ref = F.interpolate(ref, size=got.shape[2:], mode="area")
    assert (got - ref).abs().mean().item() < 4.0


def test_rerun_is_byte_identical_and_existing_dataset_is_refused(demo, built, tmp_path):
    cfg, out, _ = built
    again = tmp_path / "again"
    shard(_sources(demo), str(again), cfg)
    assert _files(out / "v000001") == _files(again / "v000001")
    with pytest.raises(ShardJobError, match="already holds a dataset"):
        shard(_sources(demo), str(out), cfg)


KILL_SCRIPT = """
import sys
from data_prep.config import load_shard_config
from data_prep.shard import shard
cfg = load_shard_config(sys.argv[1], sys.argv[4:])
shard(sys.argv[2].split(","), sys.argv[3], cfg)
"""


def _first_done(out: Path, stage: str) -> bool:
    if stage == "write":
        return bool(list((out / "v000001").rglob("*.tar")))
    cache = out / "_work" / "v000001" / "sources"
    return cache.is_dir() and any(not p.name.startswith(".") for p in cache.iterdir())


@pytest.mark.parametrize("stage", ["encode", "write"])
def test_kill_minus_9_then_rerun_gives_the_same_dataset(demo, demo_cfg, ray_cluster, tmp_path, stage):
    config = str(CONFIGS / "shard" / "demo.yaml")
    overrides = ["shards.maxcount=1", "clips.lengths=[16]", f"ray.address={ray_cluster}"]
    cfg = demo_cfg(*overrides)
    reference = tmp_path / "reference"
    if stage == "write":
        shard(_sources(demo), str(reference), cfg)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, config, ",".join(_sources(demo)), str(out),
                             *overrides], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not _first_done(out, stage):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the job finished before it could be killed"
    assert not (out / "LATEST").exists()  # the killed version is not visible
    shard(_sources(demo), str(out), cfg)  # resume
    if stage == "encode":
        shard(_sources(demo), str(reference), cfg)
    assert _files(out / "v000001") == _files(reference / "v000001")
    v = manifest.read_version(str(out))
    keys = [s["key"] for s in v["samples"]]
    assert len(keys) == len(set(keys)) == len(manifest.read_version(str(reference))["samples"])
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_refresh_processes_only_changes(demo, demo_cfg, ray_cluster, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(demo.root, src)
    sources = [str(src / "webvid.csv"), str(src / "captions_demo.json")]
    out = tmp_path / "out"
    cfg = demo_cfg()
    shard(sources, str(out), cfg)
    v1 = manifest.read_version(str(out))
    files_v1 = _files(out / "v000001")
    # no change: nothing written
    r = refresh(sources, str(out), cfg)
    assert not r.wrote and "nothing written" in r.message
    assert manifest.versions(str(out)) == ["v000001"]
    # touching a file without changing it is not a change (hash equal)
    os.utime(src / "videos" / "rgb_wide.mp4", (time.time() + 5, time.time() + 5))
    assert not refresh(sources, str(out), cfg).wrote
    # add one video, remove one
    removed = demo.videos["mandel_square"]["id"]
    make_video(src / "videos" / "added.mp4", "testsrc2", 192, 192, 20, 24)
    lines = (src / "webvid.csv").read_text().splitlines()
    lines = [ln for ln in lines if not ln.startswith(removed.split(":")[1] + ",")]
    lines.insert(1, "3000,videos/added.mp4,PT00H00M01S,demo,an added video")
    (src / "webvid.csv").write_text("\n".join(lines) + "\n")
    r = refresh(sources, str(out), cfg)
    assert r.wrote and r.version == "v000002"
    assert (r.stats["added"], r.stats["changed"], r.stats["removed"], r.stats["sources_processed"]) == (1, 0, 1, 1)
    v2 = manifest.read_version(str(out))
    old = {s["key"]: s for s in v1["samples"]}
    new = {s["key"]: s for s in v2["samples"]}
    old_ids = {s["source_id"] for s in old.values()}
    assert {s["source_id"] for s in new.values()} == (old_ids - {removed}) | {"webvid:3000"}
    assert {k for k in old if old[k]["source_id"] != removed} <= set(new)
    # shards without the removed source are reused as they are; only the others are new
    removed_shards = {s["shard"] for s in v1["samples"] if s["source_id"] == removed}
    reused = {s["shard"] for s in v2["shards"] if s["shard"].startswith("v000001/")}
    assert reused == {s["shard"] for s in v1["shards"]} - removed_shards
    written = [s for s in v2["shards"] if s["shard"].startswith("v000002/")]
    removed_buckets = {old[k]["bucket"] for k in old if old[k]["source_id"] == removed}
    assert {s["bucket"] for s in written} == {"192x192"} | removed_buckets
    # the old version is untouched and still readable
    assert _files(out / "v000001") == files_v1
    assert manifest.read_version(str(out), "v000001")["samples"] == v1["samples"]
    # a changed file (new content) is reprocessed
    make_video(src / "videos" / "added.mp4", "testsrc2", 192, 192, 36, 24)
    r = refresh(sources, str(out), cfg)
    assert (r.version, r.stats["changed"], r.stats["added"], r.stats["removed"]) == ("v000003", 1, 0, 0)
    v3 = manifest.read_version(str(out))
    assert sorted(s["frames"] for s in v3["samples"] if s["source_id"] == "webvid:3000") == [32]
