"""``local``: torchrun on this machine."""

from __future__ import annotations

import sys


def local_command(entry_argv: list[str], nproc: int, *, python: str = sys.executable) -> list[str]:
    """``torchrun --standalone`` (as ``python -m torch.distributed.run``, the same interpreter)."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc_per_node={nproc}", "--max_restarts=0", *entry_argv]
