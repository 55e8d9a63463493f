"""Fixtures of the launcher tests (the shared ``isolated`` runner is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

# Stands in for `python -m pvq_model.train` where a test checks what a launcher starts: each rank
# joins the process group from the environment, all-reduces rank + 1 and records what it saw.
PROBE = r'''
import argparse, json, os
from pathlib import Path
import torch, torch.distributed as dist
ap = argparse.ArgumentParser()
ap.add_argument("--config"); ap.add_argument("--out"); ap.add_argument("--set", action="append", default=[])
a = ap.parse_args()
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
        "GLOO_SOCKET_IFNAME", "SLURM_JOB_ID", "SLURM_PROCID"]
rec = {"rank": rank, "world": world, "sum": t.item(), "config": a.config, "out": a.out, "sets": a.set,
       "env": {k: os.environ.get(k) for k in keys}, "pid": os.getpid()}
d = Path(a.out) / "probe"; d.mkdir(parents=True, exist_ok=True)
(d / f"rank{rank}.json").write_text(json.dumps(rec))
dist.barrier()
dist.destroy_process_group()
'''


@pytest.fixture
def probe_entry(tmp_path: Path) -> Path:
    """A file holding :data:`PROBE`, the stand-in trainer of the launcher tests."""
    path = tmp_path / "probe_entry.py"
    path.write_text(PROBE)
    return path
