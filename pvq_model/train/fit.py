"""The plain single-process PyTorch training loop (no DeepSpeed, no GAN), and the generator step
it shares with the DeepSpeed trainer (``pvq_model.train.loop``).

The plain-PyTorch peer that the DeepSpeed trainer is benchmarked against
(``benchmarks/train_step.py``), the loop of the controlled experiments
(``benchmarks/training_dynamics.py``) and a quick way to train a model on a few clips in a notebook.
The paper's training is :mod:`pvq_model.train.loop`. This module imports no DeepSpeed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainConfig
from ..losses import PVQLoss
from ..vae import PVQVAE, VAEOutput
from .augment import augment_


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(t: TrainConfig, step: int, lr: float | None = None) -> float:
    """The paper's schedule: linear warm-up from 0 at step 0 to ``lr`` at ``warmup_steps``, then
    linear decay to 0 at ``steps`` (DeepSpeed's WarmupDecayLR with ``warmup_type: linear`` and
    ``warmup_min_lr: 0``, which the trainer uses; tested equal)."""
    peak = t.lr if lr is None else lr
    if step < t.warmup_steps:
        return peak * step / t.warmup_steps
    return peak * max(0.0, (t.steps - step) / max(1, t.steps - t.warmup_steps))


def generator_step(model: nn.Module, loss_fn: PVQLoss, x: Tensor, mask: Tensor, step: int, *,
                   model_input: Tensor | None = None, discriminator: nn.Module | None = None,
                   heads: nn.Module | None = None) -> tuple[Tensor, dict[str, Tensor], VAEOutput]:
    """One generator forward and loss: ``x`` (B, C, T, H, W) in [-1, 1], ``mask`` (B, T).

    ``model_input`` is what the model sees (the trainer passes ``x.bfloat16()`` to a bf16 engine);
    the losses are always computed in fp32 against ``x``. Returns (total loss, weighted parts,
    model output). The DeepSpeed trainer and :func:`fit` both call this, so the two paths compute
    the same loss from the same batch (tests/train/test_equivalence.py)."""
    out = model(x if model_input is None else model_input)
    loss, parts = loss_fn.generator(x, out, mask, step, discriminator=discriminator, heads=heads)
    return loss, parts, out


class EMAWeights:
    """fp32 exponential moving average of a plain (non-DeepSpeed) module's parameters."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for n, p in module.named_parameters():
            self.shadow[n].mul_(self.decay).add_(p.detach().float(), alpha=1 - self.decay)

    @contextmanager
    def swapped(self, module: nn.Module) -> Iterator[None]:
        """Run ``module`` with the EMA weights inside the block; its own weights come back after."""
        params = dict(module.named_parameters())
        saved = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])


def _as_pair(item: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    if isinstance(item, tuple):
        return item
    return item, torch.ones(item.shape[0], item.shape[2], dtype=torch.bool)


def collate(items: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack (1, C, T, H, W) clips and their (1, T) masks; shorter clips (images) are zero-padded
    in time to the longest, with their padded frames masked out."""
    t = max(v.shape[2] for v, _ in items)
    videos = [F.pad(v, (0, 0, 0, 0, 0, t - v.shape[2])) for v, _ in items]
    masks = [F.pad(m, (0, t - m.shape[1])) for _, m in items]
    return torch.cat(videos), torch.cat(masks).bool()


def fit(model: PVQVAE, clips: Sequence[Tensor | tuple[Tensor, Tensor]], steps: int, lr: float | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None, *, batch_size: int | None = None,
        eval_every: int = 0, on_eval: Callable[[int, "EMAWeights", dict[str, float]], None] | None = None,
        data_init: bool = True) -> list[float]:
    """Train ``model`` for ``steps`` Adam steps on ``clips`` (each (1, 3, T, H, W) in [-1, 1], or a
    (video, mask) pair) with the config's schedule (:func:`lr_at`), betas, eps, grad clipping and EMA.

    Each step draws ``batch_size`` clips (default ``train.global_batch``, what one step of the
    trainer sees over all ranks) without replacement from a shuffled order seeded by
    ``train.seed``, mirrored / reversed as ``data.hflip`` / ``data.reverse`` say
    (:mod:`pvq_model.train.augment`), and runs :func:`fit_batches` on them (``on_eval``, ``eval_every``
    and ``data_init`` as there). Returns the loss per step."""
    cfg = model.cfg
    t = cfg.train
    pairs = [_as_pair(c) for c in clips]
    batch_size = min(batch_size or t.global_batch, len(pairs))

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        rng = np.random.default_rng(t.seed)
        order: list[int] = []
        drawn = 0
        while True:
            while len(order) < batch_size:
                order.extend(rng.permutation(len(pairs)).tolist())
            x, mask = collate([pairs[order.pop(0)] for _ in range(batch_size)])
            # in place on collate's copy (a no-op with both off): the clips themselves stay as given
            augment_(x, mask, seed=t.seed, step=drawn, hflip=cfg.data.hflip, reverse=cfg.data.reverse)
            drawn += 1
            yield x, mask

    return fit_batches(model, batches(), steps, lr, callback, eval_every=eval_every, on_eval=on_eval,
                       data_init=data_init)


def make_adam(model: nn.Module, lr: float) -> torch.optim.Adam:
    """The config's Adam (betas, eps, weight decay, fused kernel) over ``model``'s parameters."""
    t = model.cfg.train
    return torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay,
                            fused=t.fused_adam)


def plain_step(model: PVQVAE, opt: torch.optim.Optimizer, loss_fn: PVQLoss, ema: EMAWeights,
               micro: Sequence[tuple[Tensor, Tensor]], step: int,
               lr: float | None = None) -> tuple[float, dict[str, float]]:
    """One optimizer step of the plain loop on the micro-batches ``micro`` ((video, mask) pairs,
    ``grad_accum`` of them): each micro-batch's loss divided by their number before its backward
    (DeepSpeed's ``engine.backward``), one clip to ``train.grad_clip``, one Adam step with
    ``lr_at(step)``, one EMA update. Returns (loss, parts), means over the micro-batches summed in
    the trainer's order."""
    t = model.cfg.train
    for group in opt.param_groups:
        group["lr"] = lr_at(t, step, lr)
    opt.zero_grad(set_to_none=True)
    parts_f: dict[str, float] = {}
    total = 0.0
    n = len(micro)
    for x, mask in micro:
        loss, parts, _ = generator_step(model, loss_fn, x, mask, step)
        (loss / n).backward()
        for k, v in parts.items():
            parts_f[k] = parts_f.get(k, 0.0) + float(v.detach()) / n
        total += float(loss.detach()) / n
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    opt.step()
    ema.update(model)
    return total, parts_f


def fit_batches(model: PVQVAE, batches: Iterable[dict | tuple[Tensor, Tensor]], steps: int,
                lr: float | None = None, callback: Callable[[int, dict[str, float]], None] | None = None, *,
                grad_accum: int = 1, ema: EMAWeights | None = None, eval_every: int = 0,
                on_eval: Callable[[int, "EMAWeights", dict[str, float]], None] | None = None,
                data_init: bool = True) -> list[float]:
    """Train ``model`` for ``steps`` Adam steps on ready micro-batches: the plain-PyTorch twin of the
    DeepSpeed trainer's generator update (``pvq_model.train.loop.train`` with the GAN off).

    ``batches`` yields ``(video, mask)`` pairs or the trainer's dicts (``video`` (B, C, T, H, W) in
    [-1, 1], ``mask`` (B, T)), e.g. ``pvq_model.train.data.training_batches(cfg, 0, 1, 0)``. Each
    step consumes ``grad_accum`` of them, as the trainer does: every micro-batch's loss is divided by
    ``grad_accum`` before its backward (DeepSpeed's ``engine.backward``), the gradients accumulate,
    then one clip to ``train.grad_clip`` and one Adam step with ``lr_at(step)``. The first micro-batch
    also does the quantizer's data init (the trainer's rank 0 batch 0; ``data_init=False`` skips it,
    an experiment). ``callback(step, parts)`` runs after every step; ``on_eval(step, ema, parts)``
    every ``eval_every`` steps and after the last, after which the model is back in train mode
    (at the end it is left in eval mode with its raw, not EMA, weights). Returns the loss per
    step, the mean over its micro-batches, summed in the same order as the trainer's log."""
    t = model.cfg.train
    stream = iter(batches)

    def pair(item: dict | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return (item["video"], item["mask"]) if isinstance(item, dict) else item

    loss_fn = PVQLoss(model.cfg)
    model.train()
    first = pair(next(stream))
    if data_init:
        model.data_init(first[0])
    opt = make_adam(model, lr_at(t, 0, lr))
    ema = ema if ema is not None else EMAWeights(model, t.ema_decay)
    losses: list[float] = []
    pending: tuple[Tensor, Tensor] | None = first
    parts_f: dict[str, float] = {}
    for step in range(steps):
        micro = [pending if pending is not None else pair(next(stream))]
        micro += [pair(next(stream)) for _ in range(grad_accum - 1)]
        pending = None
        total, parts_f = plain_step(model, opt, loss_fn, ema, micro, step, lr)
        losses.append(total)
        if callback is not None:
            callback(step, {**parts_f, "loss": total})
        if on_eval is not None and eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            on_eval(step + 1, ema, parts_f)
            model.train()
    if on_eval is not None:
        on_eval(steps, ema, parts_f)
    model.eval()
    return losses
