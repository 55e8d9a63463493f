"""Checkpoints: both DeepSpeed engines (params, optimizer, LR scheduler), the EMA, the step (which is
the data position: the loader is a pure function of it) and every rank's RNG states.

Layout under ``RUN/checkpoints``: ``g/<tag>`` and ``d/<tag>`` (engine checkpoints, separate
directories because each engine writes its own ``latest``), ``ema/<tag>.safetensors``,
``rng/<tag>/rank<r>.pt``, and ``LATEST`` holding the tag; ``LATEST`` is written last, after a
barrier and after every rank has fsynced its files, so a checkpoint interrupted mid-write (or by a
power loss) is never picked up.

A checkpoint is trusted input: DeepSpeed restores engine states with ``torch.load(weights_only=False)``,
which runs code from the file. :func:`load` therefore refuses a checkpoint folder (or anything in it)
that is not owned by the current user or is world-writable (:func:`check_trusted`).

:func:`export_ema` writes the end product of a run: the consolidated EMA weights as a model directory.
"""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file


class DataLayoutError(ValueError):
    """A checkpoint resumed with a setting that changes which samples each step reads."""


def data_layout(cfg) -> dict | None:
    """What fixes, besides the step, the samples a step reads from the shards: the number of
    DataLoader workers (each owns every W-th step of its slot; ranks and accumulation do not matter,
    :mod:`.data`). ``None`` for synthetic data, which depends on the step and slot only."""
    return {"num_workers": cfg.train.num_workers} if cfg.train.data_path else None


def check_data_layout(where: Path, saved: dict | None, now: dict | None) -> None:
    """Refuse to resume with another :func:`data_layout` than the checkpoint's (a checkpoint from
    before it was recorded, or synthetic data, passes)."""
    if saved is None or now is None or saved == now:
        return
    keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    raise DataLayoutError(
        f"{where}: trained with {', '.join(f'train.{k}={saved.get(k)}' for k in keys)}, this run has "
        f"{', '.join(f'train.{k}={now.get(k)}' for k in keys)}; the samples of a step depend on it, so "
        f"resuming with another value would replay and skip samples. Resume with "
        f"{' '.join(f'--set train.{k}={saved.get(k)}' for k in keys)}")


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


class UntrustedCheckpointError(PermissionError):
    """A checkpoint folder that another user could have written; the message names the path and the fix."""


def check_trusted(root: Path) -> None:
    """Refuse ``root`` when it, or any file or folder under it, is not owned by this user or is
    world-writable: loading it would run code that someone else could have planted."""
    uid = os.getuid()
    root = Path(root)
    paths = [root, *sorted(root.rglob("*"))]
    for p in paths:
        st = p.stat()
        if st.st_uid != uid:
            raise UntrustedCheckpointError(
                f"{p}: owned by uid {st.st_uid}, not by you (uid {uid}); checkpoints are loaded with "
                f"torch.load(weights_only=False), which runs code from the file. Resume only from a run "
                f"directory you wrote (chown it if it is yours), or start a new --out")
        if st.st_mode & stat.S_IWOTH:
            raise UntrustedCheckpointError(
                f"{p}: world-writable (mode {stat.filemode(st.st_mode)}); checkpoints are loaded with "
                f"torch.load(weights_only=False), "
                f"which runs code from the file. Fix it with `chmod -R o-w {root}` if nobody else wrote it, "
                f"or start a new --out")


def _fsync_tree(*paths: Path) -> None:
    """fsync every file under ``paths`` and the folders holding them (so renames are durable too)."""
    dirs: set[Path] = set()
    for base in paths:
        if not base.exists():
            continue
        files = [base] if base.is_file() else [f for f in base.rglob("*") if f.is_file()]
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dirs.add(f.parent)
        dirs.add(base if base.is_dir() else base.parent)
    for d in sorted(dirs):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def tags(root: Path) -> list[str]:
    """Tags of the checkpoints under ``root`` (any part present), oldest first."""
    found = {p.name for sub in ("g", "d", "rng") if (root / sub).is_dir() for p in (root / sub).iterdir()
             if p.is_dir() and p.name.startswith("step")}
    found |= {p.name.removesuffix(".safetensors") for p in (root / "ema").glob("step*.safetensors")} \
        if (root / "ema").is_dir() else set()
    return sorted(found)


def prune(root: Path, keep: int, pinned: list[int] | tuple[int, ...] = ()) -> list[str]:
    """Delete all but the ``keep`` newest checkpoints, never a pinned step's or the one ``LATEST``
    names; returns the deleted tags. ``keep`` 0: delete nothing."""
    if keep <= 0:
        return []
    import shutil

    all_tags = tags(root)
    protected = set(all_tags[-keep:]) | {tag_for(s) for s in pinned} | {latest(root)}
    gone = [t for t in all_tags if t not in protected]
    for t in gone:
        for sub in ("g", "d", "rng"):
            shutil.rmtree(root / sub / t, ignore_errors=True)
        (root / "ema" / f"{t}.safetensors").unlink(missing_ok=True)
    return gone


def save(root: Path, step: int, engine_g, engine_d, ema, rank: int, keep: int = 0,
         pinned: list[int] | tuple[int, ...] = (), layout: dict | None = None) -> str:
    """Write the checkpoint of ``step`` (with the run's :func:`data_layout` ``layout``), make it
    durable, point ``LATEST`` at it, then prune to the ``keep`` newest plus the ``pinned`` steps
    (rank 0, after every rank has finished writing)."""
    tag = tag_for(step)
    client = {"step": step, **({"data_layout": layout} if layout is not None else {})}
    engine_g.save_checkpoint(str(root / "g"), tag=tag, client_state=client)
    engine_d.save_checkpoint(str(root / "d"), tag=tag, client_state={"step": step})
    (root / "rng" / tag).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), root / "rng" / tag / f"rank{rank}.pt")
    ema_state = ema.state_dict()  # a collective: the sharded EMA is gathered on every rank
    if rank == 0:
        (root / "ema").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in ema_state.items()}, root / "ema" / f"{tag}.safetensors")
    # every rank makes what it wrote durable before LATEST may point at it
    _fsync_tree(root / "g" / tag, root / "d" / tag, root / "rng" / tag,
                *([root / "ema" / f"{tag}.safetensors"] if rank == 0 else []))
    barrier()
    if rank == 0:
        tmp = root / "LATEST.tmp"
        with open(tmp, "w") as f:
            f.write(tag)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(root / "LATEST")
        _fsync_tree(root / "LATEST")
        prune(root, keep, pinned)
    barrier()
    return tag


def latest(root: Path) -> str | None:
    f = root / "LATEST"
    return f.read_text().strip() if f.is_file() else None


def load(root: Path, tag: str, engine_g, engine_d, ema, rank: int, layout: dict | None = None) -> int:
    """Restore a checkpoint; returns its step. Refuses an untrusted folder (:func:`check_trusted`), one
    written by another number of ranks (convert it with :mod:`pvq_model.train.reshard`) and one whose
    :func:`data_layout` differs from ``layout`` (:func:`check_data_layout`)."""
    check_trusted(root)
    from .reshard import check_world_size

    check_world_size(root, tag, dist.get_world_size() if dist.is_initialized() else 1)
    _, client = engine_g.load_checkpoint(str(root / "g"), tag=tag)
    check_data_layout(root / tag, client.get("data_layout"), layout)
    engine_d.load_checkpoint(str(root / "d"), tag=tag)
    ema.load_state_dict(load_file(root / "ema" / f"{tag}.safetensors"))
    rng_file = root / "rng" / tag / f"rank{rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file}: no RNG state for rank {rank}; resume with the same world size")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return int(client["step"])


def export_ema(cfg, ema, directory: Path, rank: int, extra: dict | None = None) -> Path:
    """Consolidated fp32 EMA weights of ``ema`` (:class:`pvq_model.train.ema.EMA`) as a
    ``PVQVAE.from_pretrained`` directory for ``cfg`` (rank 0 writes, through a temporary name; every
    rank waits at the barrier so none times out)."""
    from ..vae import PVQVAE

    ema_state = ema.state_dict()  # a collective: the sharded EMA is gathered on every rank
    if rank == 0:
        model = PVQVAE(cfg)
        state = model.state_dict()
        state.update({k: v for k, v in ema_state.items() if k in state})
        model.load_state_dict(state)
        tmp = directory.with_name(directory.name + ".tmp")
        model.save_pretrained(tmp, extra=extra)
        if directory.exists():
            import shutil

            shutil.rmtree(directory)
        tmp.rename(directory)
    barrier()
    return directory
