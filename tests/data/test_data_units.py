"""Fast unit tests: config, buckets, clip windows, split, sources, probe, encode."""

from __future__ import annotations

import collections

import decord
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prep import buckets, clips, encode, probe, sources
from data_prep.config import ClipConfig, EncodeConfig, load_shard_config
from pvq_common.config import ConfigError
from pvq_common.paper import PAPER_FRAMES, PAPER_SCALES

from helpers import CONFIGS

DEMO_CONFIG = CONFIGS / "shard" / "demo.yaml"


def test_config_defaults_are_the_paper_and_unknown_keys_name_the_path(tmp_path):
    cfg = load_shard_config()
    assert [tuple(s) for s in cfg.buckets.scales] == list(PAPER_SCALES)
    assert cfg.clips.lengths == list(PAPER_FRAMES)
    bad = tmp_path / "bad.yaml"
    bad.write_text("clips:\n  lenghts: [16]\n")
    with pytest.raises(ConfigError, match=r"clips\.lenghts: unknown key"):
        load_shard_config(bad)
    with pytest.raises(ConfigError, match="multiples of 16"):
        load_shard_config(None, ["clips.lengths=[20]"])
    with pytest.raises(ConfigError, match="encode.codec"):
        load_shard_config(None, ["encode.codec=vp9"])
    cfg = load_shard_config(DEMO_CONFIG, ["shards.maxcount=7"])
    assert cfg.shards.maxcount == 7 and cfg.clips.lengths == [16, 32] and cfg.encode.preset == "ultrafast"
    # the fingerprint ignores settings that do not change clip bytes
    assert cfg.fingerprint() == load_shard_config(DEMO_CONFIG, ["ray.num_cpus=1"]).fingerprint()
    assert cfg.fingerprint() != load_shard_config(DEMO_CONFIG, ["encode.crf=30"]).fingerprint()


@pytest.mark.parametrize("size,upscale,expected", [
    ((1920, 1080), 1.0, (1920, 1080)),
    ((1280, 720), 1.0, (1280, 720)),
    ((3840, 2160), 1.0, (3840, 2160)),
    ((640, 480), 1.0, (256, 256)),      # fills only 256x256
    ((720, 1280), 1.0, (512, 512)),     # portrait: nearest fillable aspect is square
    ((640, 480), 2.0, (768, 512)),      # with 2x upscale allowed, 3:2 is nearer than 1:1 or 2:1
    ((1100, 540), 1.0, (1024, 512)),    # ~2:1
    ((200, 200), 1.0, None),            # smaller than every bucket
    ((200, 200), 1.3, (256, 256)),
])
def test_choose_bucket_paper_scales(size, upscale, expected):
    assert buckets.choose_bucket(*size, PAPER_SCALES, upscale) == expected


def test_center_crop_keeps_bucket_aspect_and_centre():
    c = buckets.center_crop(1920, 1080, 256, 256)
    assert (c.w, c.h, c.x, c.y) == (1080, 1080, 420, 0) and buckets.bucket_name((c.out_w, c.out_h)) == "256x256"
    c = buckets.center_crop(368, 480, 512, 512)
    assert (c.w, c.h) == (368, 368) and c.y == 56
    c = buckets.center_crop(1296, 720, 1280, 720)
    assert (c.w, c.h, c.x) == (1280, 720, 8)  # no resize needed: a pure centre crop


def test_plan_windows_policies():
    longest = ClipConfig(lengths=[16, 32, 48, 96], max_clips_per_video=8)
    assert [(w.start, w.length) for w in clips.plan_windows(100, longest)] == [(0, 96)]
    assert [(w.start, w.length) for w in clips.plan_windows(150, longest)] == [(0, 96), (96, 48)]
    assert clips.plan_windows(15, longest) == []
    strided = ClipConfig(lengths=[16], stride=20, max_clips_per_video=3)
    assert [w.start for w in clips.plan_windows(200, strided)] == [0, 20, 40]
    assert [w.start for w in clips.plan_windows(50, strided)] == [0, 20]
    padded = ClipConfig(lengths=[16, 32], pad_short=True, min_frames=4)
    assert clips.plan_windows(10, padded) == [clips.Window(0, 10, 16)]
    assert clips.plan_windows(3, padded) == []
    rnd = ClipConfig(lengths=[16, 32, 48], length_policy="random", max_clips_per_video=50)
    a = clips.plan_windows(2000, rnd, seed=1, source_id="x")
    assert a == clips.plan_windows(2000, rnd, seed=1, source_id="x")
    assert {w.length for w in a} == {16, 32, 48}
    assert all(b.start >= w.start + w.length for w, b in zip(a, a[1:]))  # never overlap


def test_split_is_by_source_deterministic_and_near_the_fraction():
    ids = [f"webvid:{i}" for i in range(2000)]
    s = [clips.split_of(i, 42, 0.2) for i in ids]
    assert s == [clips.split_of(i, 42, 0.2) for i in ids]
    assert 320 < s.count("val") < 480
    assert s != [clips.split_of(i, 7, 0.2) for i in ids]
    assert all(clips.split_of(i, 42, 0.0) == "train" for i in ids)


def test_sources_csv_coco_folder(demo, tmp_path):
    items = sources.list_sources([str(demo.csv), str(demo.coco_json)])
    ids = [i.id for i in items]
    assert len(ids) == len(set(ids))
    bad = [i for i in items if i.error]
    assert [(i.id, i.error) for i in bad] == [(k, v) for k, v in demo.broken.items() if v == "bad_csv_row"]
    by_id = {i.id: i for i in items}
    for v in demo.videos.values():
        assert by_id[v["id"]].uri == str(v["path"]) and by_id[v["id"]].caption == v["caption"]
    for im in demo.images.values():
        assert by_id[im["id"]].kind == "image" and by_id[im["id"]].caption == im["caption"]
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.mp4").write_bytes(demo.videos["testsrc_wide"]["path"].read_bytes())
    (folder / "sub" / "a.txt").write_text("caption of a\n")
    (folder / "readme.md").write_text("ignored")
    items = sources.list_sources([str(folder)])
    assert [(i.id, i.caption, i.kind) for i in items] == [("file:sub/a.mp4", "caption of a", "video")]
    with pytest.raises(sources.SourceError, match="source not found"):
        sources.list_sources([str(tmp_path / "nope.csv")])
    with pytest.raises(sources.SourceError, match="image folder not found"):
        (tmp_path / "captions_x.json").write_text('{"images": [], "annotations": []}')
        sources.list_sources([str(tmp_path / "captions_x.json")])


def test_probe_values_and_bad_input_reasons(demo):
    for v in demo.videos.values():
        p = probe.probe(str(v["path"]))
        assert (p.width, p.height, p.frames, p.codec, p.error) == (v["width"], v["height"], v["frames"], "h264", None)
        assert p.fps == pytest.approx(v["fps"])
        assert p.duration == pytest.approx(v["frames"] / v["fps"], abs=0.05)
    im = demo.images["img_landscape"]
    p = probe.probe(str(im["path"]), "image")
    assert (p.width, p.height, p.frames) == (300, 200, 1)
    b = demo.root / "broken"
    expected = {"empty.mp4": "empty_file", "truncated.mp4": "unreadable", "notes.mp4": "unreadable",
                "tone.mp4": "no_video_stream", "nothing.mp4": "missing"}
    for name, reason in expected.items():
        assert probe.probe(str(b / name)).error == reason, name
    assert probe.probe(str(b / "garbage.jpg"), "image").error == "unreadable_image"
    assert probe.probe(str(b / "short.mp4")).frames == 10


def _resize(frames_thwc: np.ndarray, crop: buckets.Crop) -> torch.Tensor:
    x = torch.from_numpy(frames_thwc[:, crop.y:crop.y + crop.h, crop.x:crop.x + crop.w]).permute(0, 3, 1, 2).float()
    return F.interpolate(x, size=(crop.out_h, crop.out_w), mode="area")  # (T, C, H, W)


def test_encode_windows_match_a_direct_decord_read(demo, tmp_path):
    v = demo.videos["testsrc_wide"]  # a panning camera: a one-frame shift is visible
    windows = [clips.Window(0, 16, 16), clips.Window(20, 16, 16)]
    crop = buckets.center_crop(v["width"], v["height"], 160, 90)
    out = encode.encode_video(str(v["path"]), windows, crop, v["fps"], EncodeConfig(codec="lossless"), str(tmp_path))
    src = decord.VideoReader(str(v["path"])).get_batch(list(range(v["frames"]))).asnumpy()
    for w, e in zip(windows, out):
        assert e is not None and e.frames == 16
        got = decord.VideoReader(e.path).get_batch(list(range(16))).asnumpy()
        got_t = torch.from_numpy(got).permute(0, 3, 1, 2).float()
        assert got.shape == (16, 90, 160, 3)
        err = (got_t - _resize(src[w.start:w.start + 16], crop)).abs().mean().item()
        shifted = (got_t - _resize(src[w.start + 1:w.start + 17], crop)).abs().mean().item()
        assert err < 4.0 and err < 0.6 * shifted, (err, shifted)
    img = demo.images["img_landscape"]
    crop = buckets.center_crop(300, 200, 64, 64)
    e = encode.encode_image(str(img["path"]), crop, EncodeConfig(), str(tmp_path / "i.jpg"))
    assert probe.probe(e.path, "image").width == 64


def test_encode_is_deterministic(demo, tmp_path):
    v = demo.videos["mandel_square"]
    crop = buckets.center_crop(128, 128, 64, 64)
    w = [clips.Window(0, 16, 16), clips.Window(16, 16, 16)]
    a = encode.encode_video(str(v["path"]), w, crop, v["fps"], EncodeConfig(), str(tmp_path / "a"))
    b = encode.encode_video(str(v["path"]), w, crop, v["fps"], EncodeConfig(), str(tmp_path / "b"))
    assert [open(x.path, "rb").read() for x in a] == [open(x.path, "rb").read() for x in b]
    assert collections.Counter(x.frames for x in a) == {16: 2}


@pytest.mark.parametrize("n,per_task,slots", [(1, 4, 2), (5, 4, 2), (23, 4, 2), (23, 1, 2), (1000, 8, 16), (7, 4, 1)])
def test_task_groups_cover_every_source_and_end_with_single_sources(n, per_task, slots):
    from data_prep.ray_runtime import task_groups

    sizes = task_groups(n, per_task, slots)
    assert sum(sizes) == n
    assert all(1 <= g <= per_task for g in sizes)
    assert sizes == sorted(sizes, reverse=True)  # big groups first, the tail is small
    assert sizes[-1] == 1
    if n >= 2 * slots * per_task:
        assert sizes[0] == per_task


def test_tar_members_are_byte_identical_to_webdataset_tarwriter():
    import io as _io
    import tarfile

    import webdataset as wds

    from data_prep.tars import add_sample

    samples = [("clip_000000", {"mp4": bytes(range(256)) * 7, "json": '{"caption": "é"}'}),
               ("img_000000", {"jpg": b"\xff\xd8" + b"x" * 1000, "json": b"{}"})]
    ours, theirs = _io.BytesIO(), _io.BytesIO()
    with tarfile.open(fileobj=ours, mode="w|") as tw:
        for key, members in samples:
            add_sample(tw, key, members)
    with wds.TarWriter(theirs, encoder=False, mtime=0.0, user="pvq", group="pvq") as tw:
        for key, members in samples:
            tw.write({"__key__": key, **{k: v.encode() if isinstance(v, str) else v for k, v in members.items()}})
    assert ours.getvalue() == theirs.getvalue()
    # and the loader's reading path groups them back into the same samples
    files = wds.tariterators.tar_file_expander([{"url": "mem", "stream": _io.BytesIO(ours.getvalue())}])
    got = [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
           for s in wds.tariterators.group_by_keys(files)]
    assert got == [(key, {k: v.encode() if isinstance(v, str) else v for k, v in m.items()}) for key, m in samples]
