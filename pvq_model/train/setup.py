"""Training set-up: the process group, the two DeepSpeed ZeRO-3 engines (generator, discriminator)
with their EMA and resumed state, and the loss.

A lone process (no launcher: no ``RANK`` in the environment) becomes a world of one through a
*file* store in the run directory, and DeepSpeed reads its rank variables from ``os.environ``;
:func:`lone_process_env` sets them for the duration of one training call only and puts the previous
environment back afterwards, so a later trainer (or torchrun child) of the same process never sees
a stale ``RANK`` / ``MASTER_PORT``.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from pvq_common.env import scoped_env

from ..config import PVQConfig
from ..discriminator import Discriminator3D
from ..losses import PVQLoss
from ..perceptual import build_lpips
from ..vae import PVQVAE
from . import checkpoint as ckpt
from .ds_config import build_ds_config
from .ema import EMA

BatchSource = Callable[[PVQConfig, int, int, int], Iterator[dict]]
"""``(cfg, rank, world_size, start_micro_step) -> micro-batches`` (dicts with ``video``, ``mask``,
``bucket``, ``frames``), like :func:`pvq_model.train.data.training_batches`."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def lone_process_env() -> Iterator[bool]:
    """Inside the block, a process that no launcher started (no ``RANK``, no process group) has the
    rank variables of a world of one (``RANK=0 WORLD_SIZE=1 LOCAL_RANK=0``, a free loopback
    ``MASTER_PORT``, ``GLOO_SOCKET_IFNAME=lo`` unless set); the previous values come back on exit.
    Yields whether it set them. Under a launcher it changes nothing."""
    if "RANK" in os.environ or dist.is_initialized():
        yield False
        return
    values = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(_free_port()), "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    with scoped_env(values):
        yield True


def init_distributed(cfg: PVQConfig, run_dir: Path, lone: bool) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed (gloo on CPU, nccl on GPU) and hand it to DeepSpeed.

    Under a launcher this is the usual env:// rendezvous. A ``lone`` process (see
    :func:`lone_process_env`) uses a *file* store in the run directory: no TCP store, so no name
    lookups (c10d resolves "::ffff:127.0.0.1" by name, which on hosts without IPv6 lines in
    /etc/hosts becomes a DNS query; see infra/local/isolated.sh for multi-process runs)."""
    cuda = torch.cuda.is_available()
    timeout = datetime.timedelta(seconds=cfg.train.dist_timeout_s)
    backend = "nccl" if cuda else "gloo"
    if lone:
        run_dir.mkdir(parents=True, exist_ok=True)
        store = run_dir / ".dist_store"
        store.unlink(missing_ok=True)
        dist.init_process_group(backend, init_method=store.resolve().as_uri(), rank=0, world_size=1,
                                timeout=timeout)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device


def mark_zero3_leaves(model: PVQVAE) -> int:
    """Make every activation-checkpointing block and the quantizer a DeepSpeed ZeRO-3 leaf module:
    its parameters are fetched and released together by one hook pair on the block, and no hooks
    go on the modules inside it. Returns the number of leaves.

    A leaf must receive an input that requires grad: DeepSpeed releases a leaf's parameters from
    its full backward hook, which fires early (before the block's own backward) when no input needs
    a gradient. The blocks chosen here sit after the encoder's first conv, so theirs always do."""
    from deepspeed.utils import set_z3_leaf_module

    from ..blocks import Checkpointed

    leaves = [m for m in model.modules() if isinstance(m, Checkpointed)] + [model.quantizer]
    for m in leaves:
        set_z3_leaf_module(m, True)
    return len(leaves)


def _broadcast_module(module: torch.nn.Module) -> None:
    if dist.get_world_size() > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


@dataclass
class Engines:
    """What the loop steps: both engines, the EMA of the generator, the DeepSpeed config they were
    built with, and where training starts (``tag``: the checkpoint resumed from, or None)."""

    g: object
    d: object
    ema: EMA
    ds_config: dict
    start_step: int
    tag: str | None


def build_engines(cfg: PVQConfig, rank: int, world: int, batches: BatchSource, ckpt_root: Path,
                  resume: bool) -> Engines:
    """Generator and discriminator as DeepSpeed engines (torch Adam as the client optimizer), their
    EMA, and the latest checkpoint under ``ckpt_root`` loaded when ``resume``. A fresh model gets
    its data-dependent init from rank 0's first batch, broadcast (identical init on every rank)."""
    t = cfg.train
    model = PVQVAE(cfg)
    disc = Discriminator3D(cfg.discriminator, cfg.model.in_channels)
    tag = ckpt.latest(ckpt_root) if resume else None
    if tag is None:
        first = next(batches(cfg, 0, world, 0))
        model.data_init(first["video"])
        _broadcast_module(model)
    ds_cfg = build_ds_config(cfg, world, persistence_threshold=t.persistence_threshold)
    if t.zero3_leaf_blocks and t.zero_stage == 3:
        mark_zero3_leaves(model)
    adam = dict(lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay, fused=t.fused_adam)
    engine_g, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.Adam(model.parameters(), **adam),
                                             config=ds_cfg)
    engine_d, _, _, _ = deepspeed.initialize(model=disc, optimizer=torch.optim.Adam(disc.parameters(), **adam),
                                             config=ds_cfg)
    # DeepSpeed's WarmupDecayLR starts one iteration behind (optimizer step s would use lr(s - 1));
    # align it so that step s uses exactly lr(s) of the schedule (tests check it against fit.lr_at).
    for engine in (engine_g, engine_d):
        engine.lr_scheduler.step(0)
    ema = EMA(engine_g.module, t.ema_decay)
    start = 0 if tag is None else ckpt.load(ckpt_root, tag, engine_g, engine_d, ema, rank, ckpt.data_layout(cfg))
    return Engines(engine_g, engine_d, ema, ds_cfg, start, tag)


def build_loss(cfg: PVQConfig, device: torch.device) -> PVQLoss:
    """The generator/discriminator loss with LPIPS (when weights are configured) and the alignment
    teacher (when ``alignment.weight > 0``)."""
    teacher = None
    if cfg.alignment.weight > 0:
        from ..alignment import load_teacher

        teacher = load_teacher(cfg.alignment.teacher_path, device)
    return PVQLoss(cfg, lpips=build_lpips(cfg.lpips, device), teacher=teacher)
