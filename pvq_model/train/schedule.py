"""The paper's LR schedule through DeepSpeed's WarmupDecayLR: linear warm-up from 0 to ``lr`` over
``warmup_steps``, then linear decay to 0 at ``steps`` (1e-5, 10k, 800k in the paper)."""

from __future__ import annotations

import torch
from deepspeed.runtime.lr_schedules import WarmupDecayLR

from ..config import PVQConfig
from .ds_config import build_ds_config


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: PVQConfig, last_step: int = -1) -> WarmupDecayLR:
    params = build_ds_config(cfg, world_size=cfg.train.world_size)["scheduler"]["params"]
    return WarmupDecayLR(optimizer, last_batch_iteration=last_step, **params)


def lr_at(cfg: PVQConfig, step: int) -> float:
    """The learning rate used by optimizer step ``step`` (0-based)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.train.lr)
    sched = make_scheduler(opt, cfg, last_step=step - 1)
    sched.step(step)
    return sched.get_lr()[0]
