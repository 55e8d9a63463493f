"""The training data position on real shards (pvq_model.train.data.shard_batches) across world sizes.

A step's global batch is laid out in (optimizer step, slot) and slot ``k`` is consumer ``k`` of the
shard loader, so what a step reads must depend only on the number of slots, not on how they are
split over ranks x grad-accum (tests/train/test_reshard.py checks the trainer on this, but only on
synthetic batches). On a small dataset sharded by ``data_prep.shard`` (the local executor, no Ray),
every rank of a layout is driven as the trainer drives it: rank ``r``'s micro-batch ``m`` fills
``slot_of(cfg, r, m)``. Checked, per (step, slot), on clip keys and on the decoded values:

- 2 ranks x accum 1 == 1 rank x accum 2 (2 slots); 4 x 1 == 2 x 2 == 1 x 4 (4 slots); also with
  DataLoader workers;
- a run resumed at step k (and at a micro-step inside step k's accumulation) reads exactly what
  the run from 0 read there, also on another layout: [0, k) + [k, n) == [0, n), nothing replayed
  or skipped, with k past an epoch wrap;
- each slot's stream per bucket is its part of each epoch's shuffled shard list (whole shards
  when there are enough, else every C-th sample), the parts of an epoch partition the bucket, and
  an exhausted part continues with the next epoch's.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from functools import cache

import pytest
import torch

from data_prep import manifest, storage
from data_prep.loader import ShardLoader, decode_sample, read_shard, step_choice
from helpers import CONFIGS, DEBUG_CONFIG, ROOT, trainer_env
from pvq_model.config import load_config
from pvq_model.train.data import shard_batches, slot_of

BUCKETS = ["64x64", "96x64"]  # the loader's default order: by area
FRAMES = [16, 32]  # the clips are 16 frames: 32 pads (mask False past frame 16)
SEED, MICRO, STEPS = 3, 2, 9
LAYOUTS = {2: [(2, 1), (1, 2)], 4: [(4, 1), (2, 2), (1, 4)]}  # slots -> (ranks, grad_accum)
RESUME = [1, 6]  # step 6 lies past an epoch wrap in every slot (checked below)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """9 clips of 64x64 in 5 shards (2, 2, 2, 2, 1) and 6 of 96x64 in 3: with 4 slots the first
    bucket is read in whole shards, the second every 4th sample; all in train."""
    from data_prep.config import load_shard_config
    from data_prep.samples import make_video
    from data_prep.shard import shard

    root = tmp_path_factory.mktemp("position_src")
    for i in range(3):
        make_video(root / "sq" / f"v{i}.mp4", "mandelbrot", 64, 64, 48, 24)
    for i in range(2):
        make_video(root / "wide" / f"v{i}.mp4", "testsrc2", 96, 64, 48, 24)
    cfg = load_shard_config(CONFIGS / "shard" / "demo.yaml", [
        "executor=local", "clips.lengths=[16]", "shards.val_fraction=0.0", "shards.maxcount=2",
        "buckets.scales=[[64,64],[96,64]]"])
    out = tmp_path_factory.mktemp("position_ds") / "ds"
    result = shard([str(root)], str(out), cfg)
    assert result.stats["executor"] == "local" and result.stats["errors"] == 0
    assert result.stats["clips_per_bucket"] == {"64x64": 9, "96x64": 6}
    return str(out)


@pytest.fixture(scope="module")
def shard_keys(dataset) -> dict[str, list[tuple[str, list[str]]]]:
    """bucket -> [(shard url, its sample keys in file order)], read from the manifest and the tars."""
    info = manifest.read_version(dataset)
    shards: dict[str, list[tuple[str, list[str]]]] = {}
    for row in sorted(info["shards"], key=lambda r: r["shard"]):
        url = storage.join(dataset, row["shard"])
        shards.setdefault(row["bucket"], []).append((url, [s["__key__"] for s in read_shard(url)]))
    assert {b: [len(k) for _, k in s] for b, s in shards.items()} == {"64x64": [2, 2, 2, 2, 1], "96x64": [2, 2, 2]}
    return shards


def _digest(video: torch.Tensor, mask: torch.Tensor) -> str:
    return hashlib.sha256(video.contiguous().numpy().tobytes() + mask.numpy().tobytes()).hexdigest()[:16]


def _config(dataset: str, world: int, accum: int, *extra: str):
    """The debug config training on ``dataset`` with ``world`` ranks (one node) x ``accum``, micro-batch MICRO."""
    return load_config(DEBUG_CONFIG, [
        f"train.data_path={dataset}", f"train.world_size={world}", "train.nodes=1", f"train.gpus_per_node={world}",
        f"train.grad_accum={accum}", f"train.micro_batch={MICRO}", f"train.global_batch={MICRO * world * accum}",
        f"train.seed={SEED}", f"data.frames=[{','.join(map(str, FRAMES))}]", *extra])


@pytest.fixture(scope="module")
def run(dataset):
    """``run(slots, layout, start, workers)``: {(step, slot): (bucket, frames, keys, digests)} of
    every micro-batch the ranks of ``layout`` take from micro-step ``start`` to the end of step
    STEPS, as the trainer takes them; cached."""

    @cache
    def go(slots: int, layout: tuple[int, int], start: int, workers: int = 0):
        world, accum = layout
        assert world * accum == slots
        cfg = _config(dataset, world, accum, f"train.num_workers={workers}")
        out = {}
        for rank in range(world):
            batches = shard_batches(cfg, rank, world, start)
            for micro in range(start, STEPS * accum):
                b = next(batches)
                step, slot = slot_of(cfg, rank, micro)
                assert (b["step"], b["slot"]) == (step, slot), f"rank {rank} micro-step {micro}"
                assert b["video"].shape[0] == MICRO and (step, slot) not in out
                out[step, slot] = (b["bucket"], b["frames"], tuple(b["key"]),
                                   tuple(_digest(v, m) for v, m in zip(b["video"], b["mask"])))
            batches.close()  # stops DataLoader workers
        return out

    return go


def _reference(run, slots: int) -> dict:
    return run(slots, LAYOUTS[slots][0], 0)


def _slot_streams(ref: dict, slots: int, until: int = STEPS) -> dict[tuple[int, str], list[str]]:
    """(slot, bucket) -> the keys that slot read from that bucket in steps [0, until), in order."""
    streams: dict[tuple[int, str], list[str]] = {}
    for step in range(until):
        for slot in range(slots):
            bucket, _, keys, _ = ref[step, slot]
            streams.setdefault((slot, bucket), []).extend(keys)
    return streams


@pytest.mark.parametrize("slots", sorted(LAYOUTS))
def test_reference_follows_the_schedule_and_decodes_the_keyed_samples(run, shard_keys, slots):
    ref = _reference(run, slots)
    assert sorted(ref) == [(s, k) for s in range(STEPS) for k in range(slots)]
    raw = {s["__key__"]: s for shards in shard_keys.values() for url, _ in shards for s in read_shard(url)}
    bucket_of = {k: b for b, shards in shard_keys.items() for _, keys in shards for k in keys}
    decoded: dict[tuple[str, int], str] = {}
    for (step, slot), (bucket, frames, keys, digests) in ref.items():
        assert (bucket, frames) == step_choice(SEED, step, BUCKETS, FRAMES)  # one draw per optimizer step
        for key, digest in zip(keys, digests):
            assert bucket_of[key] == bucket
            if (key, frames) not in decoded:
                decoded[key, frames] = _digest(*decode_sample(raw[key], frames))
            assert digest == decoded[key, frames], f"step {step} slot {slot}: {key} is not the sample decoded"
    assert {b for b, *_ in ref.values()} == set(BUCKETS) and {f for _, f, *_ in ref.values()} == set(FRAMES)


@pytest.mark.parametrize("slots,layout", [(s, lay) for s, lays in LAYOUTS.items() for lay in lays[1:]])
def test_a_steps_samples_do_not_depend_on_how_the_slots_are_split(run, slots, layout):
    ref, other = _reference(run, slots), run(slots, layout, 0)
    assert other == ref
    for step in range(STEPS):  # the step's global batch, as an ordered list and as a multiset
        assert [k for slot in range(slots) for k in other[step, slot][2]] == \
               [k for slot in range(slots) for k in ref[step, slot][2]]


@pytest.mark.parametrize("k", RESUME)
@pytest.mark.parametrize("slots,layout", [(s, lay) for s, lays in LAYOUTS.items() for lay in lays])
def test_resume_reads_neither_replayed_nor_skipped_samples(run, slots, layout, k):
    """Resumed at step k on ``layout`` (and, past the wrap, at every micro-step j inside step k's
    accumulation): the rest of the reference. A run stopped there read the prefix of its run from
    0, on any layout at a step boundary: [0, k) + [k, n) is the reference, every sample as often."""
    ref = _reference(run, slots)
    accum = layout[1]
    for j in range(accum if k == max(RESUME) else 1):
        start = k * accum + j

        def done(step: int, slot: int) -> bool:  # read before micro-step `start` of `layout`
            return step < k or (step == k and slot % accum < j)

        tail = run(slots, layout, start)
        assert tail == {p: v for p, v in ref.items() if not done(*p)}, f"resumed at micro-step {start}"
        for before in LAYOUTS[slots] if j == 0 else [layout]:  # saved on `before`, resumed on `layout`
            head = {p: v for p, v in run(slots, before, 0).items() if done(*p)}
            assert len(head) == k * slots + j * (slots // accum) and not head.keys() & tail.keys()
            assert {**head, **tail} == ref
            assert Counter(x for v in [*head.values(), *tail.values()] for x in v[2]) == \
                   Counter(x for v in ref.values() for x in v[2])


def test_the_resume_steps_lie_past_an_epoch_wrap(run):
    """Every slot has read a sample twice before the last resume step: its skip crosses an epoch."""
    for slots in LAYOUTS:
        streams = _slot_streams(_reference(run, slots), slots, until=max(RESUME))
        for slot in range(slots):
            assert any(len(set(s)) < len(s) for (c, _), s in streams.items() if c == slot), (slots, slot)


@pytest.mark.parametrize("slots", sorted(LAYOUTS))
def test_the_epoch_wraps_as_documented(run, dataset, shard_keys, slots):
    ref = _reference(run, slots)
    planner = ShardLoader(dataset, batch_size=MICRO, frames=FRAMES, seed=SEED, rank=0, world_size=slots)
    orders = {}
    for (slot, bucket), stream in _slot_streams(ref, slots).items():
        keys_of = dict(shard_keys[bucket])
        all_keys = sorted(k for _, ks in shard_keys[bucket] for k in ks)
        expected, epoch = [], 0
        while len(expected) < len(stream):
            parts = []
            for consumer in range(slots):
                plan = planner._epoch_plan(bucket, epoch, consumer, slots)
                if len(shard_keys[bucket]) >= slots:  # whole shards, each read once per epoch
                    assert all((first, stride) == (0, 1) for _, first, stride in plan)
                else:  # every C-th sample of the epoch's shard order
                    assert all(stride == slots for _, _, stride in plan)
                parts.append([k for s, first, stride in plan for k in keys_of[s.url][first::stride]])
            assert sorted(k for p in parts for k in p) == all_keys, f"{bucket} epoch {epoch}: not a partition"
            orders.setdefault(bucket, []).append([s.url for s, *_ in planner._epoch_plan(bucket, epoch, 0, 1)])
            expected += parts[slot]
            epoch += 1
        assert stream == expected[:len(stream)], f"slot {slot}, bucket {bucket}"
        assert epoch >= 2, f"slot {slot} never wrapped in {bucket}"
    assert any(o[0] != o[1] for o in orders.values()), "each epoch reshuffles the shard list"


def test_dataloader_workers_keep_the_layout_and_the_resume(run):
    """With 2 workers per loader the consumers are slot x worker; still no dependence on the split."""
    ref = run(2, (2, 1), 0, 2)
    assert ref != _reference(run, 2)  # other consumers, so other samples
    assert run(2, (1, 2), 0, 2) == ref
    tail = run(2, (1, 2), 6 * 2 + 1, 2)  # 1 rank x accum 2, from inside step 6's accumulation
    assert tail == {(s, slot): v for (s, slot), v in ref.items() if (s, slot) > (6, 0)}


def test_fixed_batch_repeats_each_slots_first_micro_batch_on_shards(dataset):
    """``train.fixed_batch`` (an overfitting check) on shards: every step of a slot is that slot's step-0
    micro-batch, values included, in fresh tensors, with the step labels of the steps it fills."""
    normal = shard_batches(_config(dataset, 1, 2), 0, 1, 0)
    step0 = [next(normal) for _ in range(2)]  # slots 0 and 1 of step 0
    normal.close()
    assert len({tuple(b["key"]) for b in step0}) == 2  # the two slots hold different samples
    cfg = _config(dataset, 1, 2, "train.fixed_batch=true")
    got = shard_batches(cfg, 0, 1, 3)  # step 1, slot 1 on
    for micro in range(3, 9):
        b = next(got)
        step, slot = slot_of(cfg, 0, micro)
        ref = step0[slot]
        assert (b["step"], b["slot"], b["bucket"], b["frames"], b["key"]) == (
            step, slot, ref["bucket"], ref["frames"], ref["key"])
        assert torch.equal(b["video"], ref["video"]) and torch.equal(b["mask"], ref["mask"])
        b["video"].add_(1.0)  # an in-place augmentation of one step does not reach the next
    assert torch.equal(next(got)["video"], step0[1]["video"])


@pytest.mark.slow
def test_resume_with_another_number_of_workers_is_refused(dataset, tmp_path):
    """A DataLoader worker owns every W-th step of its slot, so ``train.num_workers`` is part of the
    data position: the checkpoint records it, a resume with another value is refused with the fix, and
    the same value resumes."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pvq_model.train", "--config", str(DEBUG_CONFIG), "--out", str(out),
           "--set", f"train.data_path={dataset}", "--set", "train.data_buckets=[64x64]", "--set", "data.frames=[16]",
           "--set", "train.checkpoint_every=1", "--set", "train.num_workers=0"]

    def train(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, *extra], cwd=ROOT, env=trainer_env(), capture_output=True, text=True,
                              timeout=600)

    first = train("--set", "train.steps=1")
    assert first.returncode == 0, first.stderr[-3000:]
    refused = train("--set", "train.steps=2", "--set", "train.num_workers=1")
    said = " ".join(refused.stderr.split())
    assert refused.returncode != 0 and "DataLayoutError" in said, said[-3000:]
    assert "trained with train.num_workers=0, this run has train.num_workers=1" in said
    assert "Resume with --set train.num_workers=0" in said
    again = train("--set", "train.steps=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["step"] == 2
