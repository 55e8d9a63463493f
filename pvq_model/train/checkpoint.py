"""Checkpoints: both DeepSpeed engines (params, optimizer, LR scheduler), the EMA, the step (which is
the data position: the loader is a pure function of it) and every rank's RNG states.

Layout under ``RUN/checkpoints``: ``g/<tag>`` and ``d/<tag>`` (engine checkpoints, separate
directories because each engine writes its own ``latest``), ``ema/<tag>.safetensors``,
``rng/<tag>/rank<r>.pt``, and ``LATEST`` holding the tag; ``LATEST`` is written last, after a
barrier, so a checkpoint interrupted mid-write is never picked up.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file


def tag_for(step: int) -> str:
    return f"step{step:09d}"


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(root: Path, step: int, engine_g, engine_d, ema, rank: int) -> str:
    tag = tag_for(step)
    engine_g.save_checkpoint(str(root / "g"), tag=tag, client_state={"step": step})
    engine_d.save_checkpoint(str(root / "d"), tag=tag, client_state={"step": step})
    (root / "rng" / tag).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), root / "rng" / tag / f"rank{rank}.pt")
    ema_state = ema.state_dict()  # a collective: the sharded EMA is gathered on every rank
    if rank == 0:
        (root / "ema").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in ema_state.items()}, root / "ema" / f"{tag}.safetensors")
    barrier()
    if rank == 0:
        tmp = root / "LATEST.tmp"
        tmp.write_text(tag)
        tmp.replace(root / "LATEST")
    barrier()
    return tag


def latest(root: Path) -> str | None:
    f = root / "LATEST"
    return f.read_text().strip() if f.is_file() else None


def load(root: Path, tag: str, engine_g, engine_d, ema, rank: int) -> int:
    """Restore a checkpoint; returns its step."""
    _, client = engine_g.load_checkpoint(str(root / "g"), tag=tag)
    engine_d.load_checkpoint(str(root / "d"), tag=tag)
    ema.load_state_dict(load_file(root / "ema" / f"{tag}.safetensors"))
    rng_file = root / "rng" / tag / f"rank{rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file}: no RNG state for rank {rank}; resume with the same world size")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return int(client["step"])
