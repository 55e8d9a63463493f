"""The training loader: shapes, masks, per-step bucket schedule, ranks, determinism, resume."""

from __future__ import annotations


import pytest
import torch

from data_prep.loader import BufferPool, ShardLoader, decode_sample, make_loader, step_choice
from data_prep.samples import make_image, make_video
from data_prep.shard import shard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(demo_cfg, ray_cluster, tmp_path_factory):
    """Two buckets (64x64, 96x64) with 15 clips each plus a few images, all in train."""
    root = tmp_path_factory.mktemp("loader_src")
    for i in range(5):
        make_video(root / "sq" / f"v{i}.mp4", "mandelbrot", 64, 64, 48, 24)
        make_video(root / "wide" / f"v{i}.mp4", "testsrc2", 96, 64, 48, 24)
        (root / "sq" / f"v{i}.txt").write_text(f"square video {i}")
    for i in range(3):
        make_image(root / "sq" / f"i{i}.jpg", "smptebars", 80, 80)
    make_video(root / "sq" / "short.mp4", "testsrc2", 64, 64, 10, 24)  # padded to 16, 10 real frames
    cfg = demo_cfg("clips.lengths=[16]", "shards.val_fraction=0.0", "shards.maxcount=3",
                   "buckets.scales=[[64,64],[96,64]]", "clips.pad_short=true")
    out = tmp_path_factory.mktemp("loader_ds") / "ds"
    result = shard([str(root)], str(out), cfg)
    assert result.stats["clips_per_bucket"] == {"64x64": 19, "96x64": 15}
    assert result.stats["errors"] == 0
    return str(out)


def _keys(batches):
    return [(b["step"], b["bucket"], b["frames"], tuple(b["key"])) for b in batches]


def test_batches_have_the_contracted_shapes_and_values(dataset):
    batches = list(ShardLoader(dataset, batch_size=3, frames=[16, 32], steps=16, seed=1))
    assert [b["step"] for b in batches] == list(range(16))
    for b in batches:
        w, h = map(int, b["bucket"].split("x"))
        assert b["video"].shape == (3, 3, b["frames"], h, w) and b["video"].dtype == torch.float32
        assert b["video"].is_contiguous(memory_format=torch.channels_last_3d)  # decord's (T, H, W, C) storage
        assert b["mask"].shape == (3, b["frames"]) and b["mask"].dtype == torch.bool
        assert b["video"].min() >= -1.0 and b["video"].max() <= 1.0
        assert len(b["caption"]) == 3
        assert (b["bucket"], b["frames"]) == step_choice(1, b["step"], ["64x64", "96x64"], [16, 32])
        for i in range(3):
            valid = int(b["mask"][i].sum())
            sid = b["source_id"][i]
            assert valid == (1 if sid.endswith(".jpg") else 10 if sid.endswith("short.mp4") else 16)
            assert bool(b["mask"][i, :valid].all()) and not b["mask"][i, valid:].any()
            assert torch.count_nonzero(b["video"][i, :, valid:]) == 0  # padding is zero
            if b["source_id"][i].startswith("file:sq/v"):
                assert b["caption"][i].startswith("square video")
    # every kind of sample was seen, and both buckets and both frame counts are drawn
    seen = {sid.rsplit("/", 1)[-1][0] for b in batches for sid in b["source_id"]}
    assert seen == {"v", "i", "s"}
    assert {b["bucket"] for b in batches} == {"64x64", "96x64"} and {b["frames"] for b in batches} == {16, 32}


def test_decode_sample_equals_the_batch_entry(dataset):
    loader = ShardLoader(dataset, batch_size=2, frames=[32], steps=1, seed=4)
    bucket, frames = loader.choice(0)
    raw = [next(loader._stream(bucket, 0, 0, 1)) for _ in range(1)]
    batch = ShardLoader.collate(raw, bucket, frames, 0)
    video, mask = decode_sample(raw[0], frames)  # (C, T, H, W), (T,)
    assert torch.equal(video, batch["video"][0]) and torch.equal(mask, batch["mask"][0])
    assert int(mask.sum()) in (1, 10, 16) and frames == 32


def test_schedule_is_uniform_and_rank_independent():
    buckets, frames = [f"b{i}" for i in range(10)], [16, 32, 48, 96]
    draws = [step_choice(42, s, buckets, frames) for s in range(20000)]
    for b in buckets:
        assert 1800 < sum(d[0] == b for d in draws) < 2200
    for f in frames:
        assert 4600 < sum(d[1] == f for d in draws) < 5400
    assert draws != [step_choice(43, s, buckets, frames) for s in range(20000)]


def test_two_ranks_same_bucket_every_step_disjoint_samples(dataset):
    kw = dict(batch_size=2, frames=[16, 48], steps=10, seed=3, world_size=2)
    r0 = list(ShardLoader(dataset, rank=0, **kw))
    r1 = list(ShardLoader(dataset, rank=1, **kw))
    assert [(b["bucket"], b["frames"]) for b in r0] == [(b["bucket"], b["frames"]) for b in r1]
    # within the first pass over a bucket, the two ranks never share a sample
    for bucket in ("64x64", "96x64"):
        k0 = [k for b in r0 if b["bucket"] == bucket for k in b["key"]][:6]
        k1 = [k for b in r1 if b["bucket"] == bucket for k in b["key"]][:6]
        assert not set(k0) & set(k1)


def test_deterministic_and_resumable(dataset):
    kw = dict(batch_size=2, frames=[16, 32], seed=5)
    full = _keys(ShardLoader(dataset, steps=20, **kw))
    assert full == _keys(ShardLoader(dataset, steps=20, **kw))
    assert full != _keys(ShardLoader(dataset, steps=20, batch_size=2, frames=[16, 32], seed=6))
    assert _keys(ShardLoader(dataset, start_step=13, steps=20, **kw)) == full[13:]
    a = list(ShardLoader(dataset, steps=20, **kw))[17]
    b = next(iter(ShardLoader(dataset, start_step=17, steps=18, **kw)))
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["mask"], b["mask"])
    # over an epoch every sample of a bucket is seen once before any repeats
    keys = [k for s, bucket, _, ks in full if bucket == "96x64" for k in ks]
    assert len(set(keys[:15])) == min(15, len(keys))


def test_dataloader_workers_keep_step_order_and_resume(dataset):
    kw = dict(batch_size=2, frames=[16], seed=9)
    two = _keys(make_loader(dataset, num_workers=2, steps=8, **kw))
    assert [k[0] for k in two] == list(range(8))
    assert two == _keys(make_loader(dataset, num_workers=2, steps=8, **kw))
    assert _keys(make_loader(dataset, num_workers=2, start_step=5, steps=8, **kw)) == two[5:]
    assert all(b["video"].is_shared() for b in make_loader(dataset, num_workers=2, steps=4, **kw))
    # the step schedule does not depend on the worker count
    one = _keys(ShardLoader(dataset, steps=8, **kw))
    assert [k[:3] for k in one] == [k[:3] for k in two]


def test_unknown_bucket_is_a_clear_error(dataset):
    with pytest.raises(ValueError, match=r"buckets \['1x1'\] have no train shards"):
        ShardLoader(dataset, buckets=["1x1"])
    with pytest.raises(FileNotFoundError, match="no dataset"):
        ShardLoader(dataset + "_nope")


def test_recycled_buffers_never_overwrite_a_batch_still_held(dataset):
    kw = dict(batch_size=2, frames=[16, 32], steps=24, seed=3)
    fresh = [b["video"].clone() for b in ShardLoader(dataset, recycle_buffers=False, **kw)]
    held, ptrs = {}, []
    for b in ShardLoader(dataset, **kw):
        assert torch.equal(b["video"], fresh[b["step"]])
        ptrs.append(b["video"].data_ptr())
        if b["step"] % 5 == 0:
            held[b["step"]] = b["video"]  # the consumer keeps these
        elif b["step"] % 5 == 1:
            held[b["step"]] = b["video"][1, :, :3]  # or only a slice of one
    for step, v in held.items():  # none was reused while held
        assert torch.equal(v, fresh[step] if step % 5 == 0 else fresh[step][1, :, :3])
    assert len(set(ptrs)) < len(ptrs)  # dropped batches' memory was reused


def test_buffer_pool_hands_out_only_unreferenced_storage():
    pool = BufferPool(size=2)
    a = pool.take((2, 3))
    b = pool.take((2, 3))
    assert a.data_ptr() != b.data_ptr() and a.shape == (2, 3) and a.is_contiguous()
    c = pool.take((2, 3))  # both pooled storages in use: an unpooled tensor
    assert c.data_ptr() not in (a.data_ptr(), b.data_ptr()) and len(pool.storages) == 2
    view = a[1]
    pa = a.data_ptr()
    del a
    assert pool.take((1, 3)).data_ptr() not in (pa, b.data_ptr())  # a's storage is still used by the view
    del view
    small = pool.take((1, 3))
    assert small.data_ptr() == pa  # now it is free again
    del small, b
    big = pool.take((4, 5))  # larger than any free storage: one of them grows
    assert big.shape == (4, 5) and len(pool.storages) == 2
    assert max(st.nbytes() for st in pool.storages) == 4 * 20
