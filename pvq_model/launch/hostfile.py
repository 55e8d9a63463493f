"""``deepspeed``: the DeepSpeed runner over the hosts of an MPI-style hostfile."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .geometry import ROOT, Geometry, LaunchError

HOSTFILE_EXAMPLE = ROOT / "infra" / "hostfile.example"
HOSTFILE = ROOT / "infra" / "hostfile"  # the site's copy of the example (not committed)


def read_hostfile(path: Path) -> list[tuple[str, int]]:
    """(host, slots) per line of an MPI-style hostfile; ``#`` comments and blank lines skipped."""
    hosts = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\S+)\s+slots\s*=\s*(\d+)", line)
        if not m:
            raise LaunchError(f"{path}:{n}: expected 'HOST slots=N', got {line!r}")
        hosts.append((m.group(1), int(m.group(2))))
    if not hosts:
        raise LaunchError(f"{path}: no hosts")
    return hosts


def deepspeed_command(entry_argv: list[str], geo: Geometry, hostfile: Path, *, master_port: int = 29500,
                      python: str = sys.executable) -> list[str]:
    """The ``deepspeed`` runner (as ``python -m deepspeed.launcher.runner``) over the first
    ``geo.nnodes`` hosts of ``hostfile`` with ``geo.nproc_per_node`` slots each. The master is the
    first host (so the runner does not ssh for ``hostname -I``); a single localhost entry skips
    the ssh check. Ranks get their rank from the environment (``--no_local_rank``)."""
    hosts = read_hostfile(hostfile)
    if len(hosts) < geo.nnodes:
        raise LaunchError(f"{hostfile}: {len(hosts)} host(s), but {geo.nnodes} node(s) requested")
    short = [h for h, slots in hosts[: geo.nnodes] if slots < geo.nproc_per_node]
    if short:
        raise LaunchError(f"{hostfile}: {', '.join(short)} have fewer than {geo.nproc_per_node} slots")
    first = hosts[0][0]
    local = first in ("localhost", "127.0.0.1") and geo.nnodes == 1
    argv = [python, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile),
            "--num_nodes", str(geo.nnodes), "--num_gpus", str(geo.nproc_per_node),
            "--master_addr", "127.0.0.1" if first == "localhost" else first,
            "--master_port", str(master_port), "--no_local_rank"]
    if local:
        argv.append("--no_ssh_check")
    if entry_argv[0] == "-m":
        argv += ["--module", *entry_argv[1:]]
    else:
        argv += entry_argv
    return argv
