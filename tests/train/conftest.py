"""Fixtures of tests/train only (the shared ``isolated`` runner is in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def deepspeed_lr_at():
    """``(cfg, step) -> lr``: the rate DeepSpeed's WarmupDecayLR, built from the scheduler section of
    :func:`pvq_model.train.ds_config.build_ds_config` as the trainer's engines build it, gives
    optimizer step ``step`` (0-based) - the oracle the trainer's and the plain loop's LR are checked
    against."""
    import torch
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    from pvq_model.train.ds_config import build_ds_config

    def lr_at(cfg, step: int) -> float:
        params = build_ds_config(cfg, world_size=cfg.train.world_size)["scheduler"]["params"]
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.train.lr)
        sched = WarmupDecayLR(opt, last_batch_iteration=step - 1, **params)
        sched.step(step)
        return sched.get_lr()[0]

    return lr_at
