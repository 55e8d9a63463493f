"""Plain constants and functions the test modules share (``from helpers import ROOT``: pytest puts
tests/ on ``sys.path`` when it loads tests/conftest.py). Fixtures live in tests/conftest.py."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pvq_common.env import local_env

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
DEBUG_CONFIG = CONFIGS / "debug.yaml"
ISOLATED = ROOT / "infra" / "local" / "isolated.sh"
SLURM_DIR = ROOT / "infra" / "local" / "slurm"
TORCH_EXTENSIONS = os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
"""The cached DeepSpeed JIT ops (shm_comm builds once, ~70 s)."""

RANK_ENV = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
"""What every launched rank adds: loopback gloo, one thread per rank (2 cores)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 (inside a private namespace every port is free anyway)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainer_env(**extra: str) -> dict[str, str]:
    """The environment of a trainer subprocess: this process's with the loopback-only settings
    (``pvq_common.env.local_env``), the cached JIT ops, FutureWarnings off, unbuffered output and no
    ``MLFLOW_TRACKING_URI`` (each run logs to sqlite in its own directory); then ``extra``."""
    env = local_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, "TORCH_EXTENSIONS_DIR": TORCH_EXTENSIONS, "PYTHONWARNINGS": "ignore::FutureWarning",
            "PYTHONUNBUFFERED": "1", **extra}


def rank_env(**extra: str) -> dict[str, str]:
    """:func:`trainer_env` plus :data:`RANK_ENV`: the environment of ranks a launcher starts."""
    return trainer_env(**RANK_ENV, **extra)


def debug_model(*overrides: str, seed: int = 0):
    """A randomly initialised (``torch.manual_seed(seed)``) debug model (configs/debug.yaml + overrides) in eval mode."""
    import torch

    from pvq_model.config import load_config
    from pvq_model.vae import PVQVAE

    torch.manual_seed(seed)
    return PVQVAE(load_config(DEBUG_CONFIG, list(overrides))).eval()


def run_isolated(argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``argv`` inside ``infra/local/isolated.sh`` (a private network namespace with loopback
    only and a private /etc/hosts, so torch's c10d name lookups never leave the machine; DESIGN.md
    §5) in its own process group; on timeout the whole group (isolated.sh, launchers, ranks) is
    stopped and the test fails with the output."""
    proc = subprocess.Popen([str(ISOLATED), *map(str, argv)], cwd=cwd, env=env or rank_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        from pvq_model.launch.cli import stop_group

        stop_group(proc, grace_s=15)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, argv))}\n{(out or '')[-6000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def read_probe(out: Path) -> dict[int, dict]:
    """What each rank of the stand-in trainer (``PROBE`` in tests/launch/conftest.py) recorded under ``out``, by rank."""
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
    """What the ``isolated`` fixture gives the multi-process tests (tests/train, tests/launch)."""

    root = ROOT
    python = sys.executable
    slurm_dir = SLURM_DIR
    run = staticmethod(run_isolated)
    env = staticmethod(rank_env)
    free_port = staticmethod(free_port)
    read_probe = staticmethod(read_probe)
    check_export = staticmethod(check_export)


class NetnsPair:
    """Two "hosts" on this machine: network namespaces ``NAME-a`` and ``NAME-b`` joined by a veth
    pair, with the private addresses :data:`ADDRS` that exist only inside them (no route out; the
    test processes outside cannot reach them either). Each namespace has loopback, a hosts file
    naming both hosts (``ip netns exec`` bind-mounts ``/etc/netns/NS/hosts`` over ``/etc/hosts``;
    c10d's ``::1`` / ``::ffff:127.0.0.1`` names resolve there too, DESIGN.md §5) and an empty
    resolv.conf, so no name lookup leaves the machine. Needs root.

    :meth:`argv` runs a command on a host; with ``disk`` that host also gets a private ``/tmp``
    and ``/dev/shm`` (folders bind-mounted in its own mount namespace), so two hosts share no
    scratch disk. :meth:`kill` SIGKILLs every process of a host (a lost node); :meth:`close`
    every process of both, then deletes the namespaces and their /etc/netns folders."""

    ADDRS = ("10.77.0.1", "10.77.0.2")
    HOSTS = ("pvq-host-a", "pvq-host-b")
    DEV = "pvq0"
    """The veth end's name in both namespaces (so one ``GLOO_SOCKET_IFNAME`` serves both hosts)."""

    def __init__(self, name: str):
        self.names = (f"{name}-a", f"{name}-b")

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)

    def open(self) -> "NetnsPair":
        (a, b), (ia, ib) = self.names, ("veth-" + self.names[0][-8:], "veth-" + self.names[1][-8:])
        hosts = (f"127.0.0.1 localhost {socket.gethostname()}\n::1 localhost ip6-localhost ip6-loopback\n"
                 "::ffff:127.0.0.1 localhost\n" + "".join(f"{addr} {host}\n" for addr, host in zip(self.ADDRS, self.HOSTS)))
        for ns in self.names:
            self._ip("netns", "add", ns)
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts)
            (etc / "resolv.conf").write_text("")
        self._ip("link", "add", ia, "type", "veth", "peer", "name", ib)
        for ns, dev, addr in ((a, ia, self.ADDRS[0]), (b, ib, self.ADDRS[1])):
            self._ip("link", "set", dev, "netns", ns)
            self._ip("-n", ns, "link", "set", "dev", dev, "name", self.DEV)
            self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", self.DEV)
            self._ip("-n", ns, "addr", "add", "127.0.0.2/8", "dev", "lo")
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("-n", ns, "link", "set", self.DEV, "up")
        return self

    def argv(self, host: int, command: list, disk: Path | None = None) -> list[str]:
        """``command`` on host 0 or 1 (with a private /tmp and /dev/shm under ``disk``)."""
        script = 'exec "$@"'
        if disk is not None:
            for sub in ("tmp", "shm"):
                (Path(disk) / sub).mkdir(parents=True, exist_ok=True)
            d = shlex.quote(str(disk))  # /dev/shm first: once /tmp is covered, a disk under /tmp is hidden
            script = f'mount --bind {d}/shm /dev/shm && mount --bind {d}/tmp /tmp && exec "$@"'
        return ["ip", "netns", "exec", self.names[host], "bash", "-c", script, "bash", *map(str, command)]

    def pids(self, host: int) -> list[int]:
        res = subprocess.run(["ip", "netns", "pids", self.names[host]], capture_output=True, text=True, timeout=30)
        return [int(p) for p in res.stdout.split()]

    def kill(self, host: int) -> int:
        """SIGKILL every process in host ``host``'s namespace (again until none is left); returns how many."""
        import signal
        import time

        killed = 0
        for _ in range(50):
            pids = self.pids(host)
            if not pids:
                return killed
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        return killed

    @classmethod
    def remove_stale(cls, prefix: str) -> None:
        """Close the pairs ``{prefix}{PID}x...`` that an interrupted test process left behind."""
        import re

        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
        stale = {m.group(1): m.group(2) for m in re.finditer(prefix + r"((\d+)x\d+)-[ab]\b", listed)}
        for name, pid in stale.items():
            if not Path("/proc", pid).exists():
                cls(prefix + name).close()

    def close(self) -> None:
        for host in (0, 1):
            self.kill(host)
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)  # takes the veth along
            import shutil

            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
