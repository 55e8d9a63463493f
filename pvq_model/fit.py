"""A plain single-process PyTorch training loop (no DeepSpeed, no GAN).

The plain-PyTorch peer that the DeepSpeed trainer is benchmarked against
(``benchmarks/train_step.py``), and a quick way to overfit a model on a few clips in a notebook.
The paper's training is ``pvq_model.train``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .losses import PVQLoss
from .vae import PVQVAE


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(model: PVQVAE, clips: list[Tensor], steps: int, lr: float | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None) -> list[float]:
    """Train ``model`` on ``clips`` (each (1, 3, T, H, W) in [-1, 1]) cycling through them for
    ``steps`` Adam steps with the paper's betas/eps and grad clipping; returns the loss per step."""
    cfg = model.cfg
    loss_fn = PVQLoss(cfg)
    model.train()
    model.data_init(clips[0])
    opt = torch.optim.Adam(model.parameters(), lr=lr or cfg.train.lr, betas=tuple(cfg.train.betas), eps=cfg.train.eps)
    losses = []
    for step in range(steps):
        x = clips[step % len(clips)]
        mask = torch.ones(x.shape[0], x.shape[2], dtype=torch.bool)
        out = model(x)
        loss, parts = loss_fn.generator(x, out, mask, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step, {k: float(v.detach()) for k, v in parts.items()})
    model.eval()
    return losses
