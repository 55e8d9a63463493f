"""Shared fixtures of tests/train: run commands inside ``infra/local/isolated.sh`` (a private network
namespace with loopback only and a private /etc/hosts, so torch's c10d name lookups never leave the
machine; DESIGN.md §5), a tiny distributed probe that stands in for the trainer where a test checks
a launcher's wiring rather than training, and the environment every rank gets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ISOLATED = ROOT / "infra" / "local" / "isolated.sh"
SLURM_DIR = ROOT / "infra" / "local" / "slurm"
PYTHON = sys.executable

# Environment of every launched rank: loopback gloo, one thread per rank (2 cores), the cached
# DeepSpeed JIT ops (shm_comm builds once, ~70 s), no telemetry and no proxies.
RANK_ENV = {
    "GLOO_SOCKET_IFNAME": "lo",
    "OMP_NUM_THREADS": "1",
    "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions")),
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    "PYTHONUNBUFFERED": "1",
}

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


def free_port() -> int:
    """A TCP port free on this machine (inside the private namespace every port is free anyway)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **RANK_ENV, **extra}


def run_isolated(argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``argv`` inside ``infra/local/isolated.sh`` in its own process group; on timeout the
    whole group (isolated.sh, launchers, ranks) is stopped and the test fails with the output."""
    proc = subprocess.Popen([str(ISOLATED), *map(str, argv)], cwd=cwd, env=env or rank_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                out, _ = proc.communicate(timeout=15)
                break
            except subprocess.TimeoutExpired:
                out = ""
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, argv))}\n{(out or '')[-6000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def read_probe(out: Path) -> dict[int, dict]:
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted((out / "probe").glob("rank*.json"))}


def check_export(out: Path, steps: int) -> dict:
    """The trainer's export in ``out``: finite fp32 weights of the whole model, loadable with
    ``PVQVAE.from_pretrained`` (no deepspeed), and ``result.json`` at ``steps``."""
    import torch
    from safetensors.torch import load_file

    from pvq_model.vae import PVQVAE

    weights = load_file(str(out / "export" / "model.safetensors"))
    assert weights and all(bool(torch.isfinite(v).all()) for v in weights.values())
    assert {v.dtype for v in weights.values()} == {torch.float32}
    model = PVQVAE.from_pretrained(out / "export")
    assert set(model.state_dict()) == set(weights)
    assert sum(v.numel() for v in weights.values()) == sum(v.numel() for v in model.state_dict().values())
    assert json.loads((out / "result.json").read_text())["step"] == steps
    return weights


class Isolated:
    """What the slow tests of tests/train share (one object, so test modules never import conftest)."""

    root = ROOT
    python = PYTHON
    slurm_dir = SLURM_DIR
    rank_env = RANK_ENV
    run = staticmethod(run_isolated)
    env = staticmethod(rank_env)
    free_port = staticmethod(free_port)
    read_probe = staticmethod(read_probe)
    check_export = staticmethod(check_export)


@pytest.fixture(scope="session")
def isolated() -> Isolated:
    """Checks that infra/local/isolated.sh can make its namespace (root or user namespaces, unshare
    and ip; CI runs as root) and that the c10d names resolve inside it without DNS."""
    res = subprocess.run([str(ISOLATED), "bash", "-c", "getent hosts ::ffff:127.0.0.1 ::1; ip -o addr show"],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(f"infra/local/isolated.sh cannot create a private network namespace here "
                    f"(needs root + unshare): {res.stderr.strip()}")
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["::ffff:127.0.0.1", "localhost"] and lines[1].startswith("::1 ")
    assert all(" lo " in ln for ln in lines[2:]), "the namespace must hold loopback only"
    return Isolated()


@pytest.fixture
def probe_entry(tmp_path: Path) -> Path:
    path = tmp_path / "probe_entry.py"
    path.write_text(PROBE)
    return path


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
