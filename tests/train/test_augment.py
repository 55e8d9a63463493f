"""Training-time augmentation (pvq_model.train.augment): exact flips and reversals, drawn reproducibly."""

from __future__ import annotations

import itertools

import torch

from pvq_model.train.augment import augment_, draw
from pvq_model.config import load_config
from pvq_model.train.data import training_batches


def test_draws_are_reproducible_and_fair():
    draws = [draw(7, step, rank, i) for step in range(250) for rank in range(2) for i in range(2)]
    assert draws == [draw(7, step, rank, i) for step in range(250) for rank in range(2) for i in range(2)]
    flips = sum(f for f, _ in draws)
    revs = sum(r for _, r in draws)
    both = sum(f and r for f, r in draws)
    assert 420 < flips < 580 and 420 < revs < 580  # 1000 fair coins: 6 sigma is +-95
    assert 180 < both < 320  # independent coins
    assert draws != [draw(8, step, rank, i) for step in range(250) for rank in range(2) for i in range(2)]


def test_flip_and_reverse_are_exact_and_keep_padding_last():
    torch.manual_seed(0)
    video = torch.rand(16, 3, 5, 4, 6)
    mask = torch.ones(16, 5, dtype=torch.bool)
    mask[::2, 3:] = False  # every other clip has 3 real frames, 2 padded
    video[~mask.unsqueeze(1).expand(-1, 3, -1).reshape(16, 3, 5)] = 0.0
    original = video.clone()
    out = augment_(video, mask, seed=3, step=11, rank=1)
    assert out is video
    seen = set()
    for i in range(16):
        flip, rev = draw(3, 11, 1, i)
        seen.add((flip, rev))
        want = original[i].clone()
        n = int(mask[i].sum())
        if flip:
            want = want.flip(-1)
        if rev:
            want[:, :n] = want[:, :n].flip(1)
        assert torch.equal(video[i], want), i
        assert torch.count_nonzero(video[i, :, n:]) == 0  # padding untouched
    assert len(seen) == 4  # every combination occurs in this batch


def test_only_the_enabled_transform_runs():
    video = torch.rand(8, 3, 4, 2, 3)
    mask = torch.ones(8, 4, dtype=torch.bool)
    flipped = augment_(video.clone(), mask, seed=0, step=0, hflip=True, reverse=False)
    for i in range(8):
        f, _ = draw(0, 0, 0, i)
        assert torch.equal(flipped[i], video[i].flip(-1) if f else video[i])
    assert torch.equal(augment_(video.clone(), mask, seed=0, step=0, hflip=False, reverse=False), video)


def test_training_batches_resume_to_the_same_augmented_clips():
    small = ["train.micro_batch=2", "train.global_batch=4", "data.scales=[[32,32]]"]
    cfg = load_config("configs/debug.yaml", small + ["data.hflip=true", "data.reverse=true"])
    plain = load_config("configs/debug.yaml", small)
    whole = [b["video"].clone() for b in itertools.islice(training_batches(cfg, 1, 2, 0), 6)]
    resumed = [b["video"].clone() for b in itertools.islice(training_batches(cfg, 1, 2, 3), 3)]
    raw = [b["video"].clone() for b in itertools.islice(training_batches(plain, 1, 2, 0), 6)]
    for a, b in zip(whole[3:], resumed):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(whole, raw))  # something was flipped or reversed
    for step, (a, b) in enumerate(zip(whole, raw)):
        for i in range(2):
            f, r = draw(cfg.train.seed, step, 1, i)
            want = b[i].flip(-1) if f else b[i]
            want = want.flip(1) if r else want
            assert torch.equal(a[i], want)
