"""The real footage of ../shared/media (skipped with the reason when absent), to a local dir and to S3."""

from __future__ import annotations

import tarfile

import pytest

from data_prep import manifest, storage
from data_prep.buckets import choose_bucket
from data_prep.probe import probe
from data_prep.shard import shard
from data_prep.samples import make_broken

pytestmark = [pytest.mark.media, pytest.mark.slow]
VIDEOS = ("pool_cleaning_340x256.mp4", "figure_skating_640x360.mp4", "teddy_hands_368x480.mp4")
IMAGES = ("darknet__dog.jpg", "imageio-binaries__kodim03.png", "sam2__cars.jpg")


def test_real_media_mix_with_broken_files_local_and_s3(media_dir, demo_cfg, ray_cluster, s3_server, tmp_path):
    folder = tmp_path / "mix"
    folder.mkdir()
    for name in VIDEOS:
        (folder / name).symlink_to(media_dir / "videos" / name)
    for name in IMAGES:
        (folder / name).symlink_to(media_dir / "images" / name)
    bad = make_broken(folder / "bad")
    cfg = demo_cfg("buckets.scales=[[256,256],[512,512],[768,512],[1024,512],[1280,720],[256,144],[320,180]]",
                   "clips.lengths=[16]", "clips.max_clips_per_video=2")
    r = shard([str(folder)], str(tmp_path / "out"), cfg)
    v = manifest.read_version(str(tmp_path / "out"))
    expected = {}
    for name in VIDEOS + IMAGES:
        kind = "video" if name.endswith(".mp4") else "image"
        p = probe(str(media_dir / ("videos" if kind == "video" else "images") / name), kind)
        scale = choose_bucket(p.width, p.height, cfg.buckets.scales)
        n = min(2, p.frames // 16) if kind == "video" else 1
        expected[f"file:{name}"] = (f"{scale[0]}x{scale[1]}", n)
    got = {}
    for s in v["samples"]:
        b, n = got.get(s["source_id"], (s["bucket"], 0))
        got[s["source_id"]] = (b, n + 1)
    assert got == expected
    assert r.stats["errors_by_reason"] == {"empty_file": 1, "no_video_stream": 1, "unreadable": 2, "too_short": 1,
                                           "unreadable_image": 1}
    assert len(bad) == 6 and r.stats["sources"] == len(VIDEOS) + len(IMAGES) + len(bad)
    # the same folder uploaded to S3, sharded to S3: same clips, same encoded bytes
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="media")
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), "media", f"mix/{p.relative_to(folder)}")
    r3 = shard(["s3://media/mix"], "s3://media/out", cfg)
    v3 = manifest.read_version("s3://media/out")
    assert r3.stats["errors_by_reason"] == r.stats["errors_by_reason"]
    assert [(s["key"], s["bucket"], s["frames"], s["bytes"]) for s in v3["samples"]] == \
           [(s["key"], s["bucket"], s["frames"], s["bytes"]) for s in v["samples"]]
    local = {s["key"]: s for s in v["samples"]}
    for s in v3["samples"][:3]:
        with storage.open_read(f"s3://media/out/{s['shard']}") as f, tarfile.open(fileobj=f, mode="r|") as tf:
            media = {m.name: tf.extractfile(m).read() for m in tf if not m.name.endswith(".json")}
        with tarfile.open(tmp_path / "out" / local[s["key"]]["shard"]) as tf:
            assert media[f"{s['key']}.{s['ext']}"] == tf.extractfile(f"{s['key']}.{s['ext']}").read()
