"""Run a launch (or print it, with the memory estimate, in a dry run) and the small command line
over it: ``python -m pvq_model.launch --help``; ``--write-ds-config`` regenerates
``infra/deepspeed/zero3_paper.json``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from ..config import ConfigError, load_config
from ..train.ds_config import PAPER_DS_CONFIG, write_paper_ds_config
from .geometry import LAUNCHERS, ROOT, LaunchError
from .hostfile import HOSTFILE_EXAMPLE
from .memory import format_memory, memory_estimate
from .plan import DEFAULT_ENTRY, LaunchRequest, format_plan, plan
from .slurm import slurm_submit, slurm_wait


def run(req: LaunchRequest, dry_run: bool = False, *, poll_s: float = 10.0, timeout_s: float | None = None,
        estimate: bool = True) -> int:
    """Launch training (or, with ``dry_run``, print the command and the per-GPU memory estimate)
    and return the exit code: the trainer's (single/local), the runner's (deepspeed) or the Slurm
    job's (2 for a request that does not build)."""
    try:
        p = plan(req)
    except (LaunchError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_plan(p), flush=True)
    if dry_run:
        if estimate:
            rows, table = memory_estimate(load_config(Path(req.config), p.overrides), p.geometry)
            print(format_memory(rows, table, p.geometry), flush=True)
        return 0
    if p.hostfile == HOSTFILE_EXAMPLE:
        print(f"error: {HOSTFILE_EXAMPLE} lists placeholder hosts; pass --hostfile", file=sys.stderr)
        return 2
    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    if p.launcher == "slurm":
        job_id = slurm_submit(p.script)
        print(f"submitted slurm job {job_id}; log {out.resolve() / 'launch' / f'slurm-{job_id}.out'}", flush=True)
        return slurm_wait(job_id, poll_s=poll_s, timeout_s=timeout_s, echo=lambda s: print(s, flush=True))
    # own process group, so a timeout stops the launcher and every rank it started
    proc = subprocess.Popen(p.argv, env={**os.environ, **p.env}, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        stop_group(proc)
        print(f"error: {p.launcher} launch stopped (timeout {timeout_s}s or interrupt)", file=sys.stderr)
        return 124


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session``), SIGKILL after
    ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pvq_model.launch",
                                 description="Launch training: one process, torchrun, Slurm or the DeepSpeed runner.")
    ap.add_argument("--config", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--launcher", choices=LAUNCHERS, default="local")
    ap.add_argument("--nproc", type=int, default=0, help="processes per node (0: from the config)")
    ap.add_argument("--nnodes", type=int, default=0, help="nodes (0: from the config)")
    ap.add_argument("--dry-run", action="store_true", help="print the command and the memory estimate")
    ap.add_argument("--hostfile", type=Path, help="deepspeed: MPI-style hostfile")
    ap.add_argument("--master-port", type=int, default=29500)
    ap.add_argument("--cpu", action="store_true", help="no GPUs: gloo backend, no --gpus-per-node")
    ap.add_argument("--slurm-nodes", type=int, help="slurm: machines to allocate (default --nnodes)")
    ap.add_argument("--cpus-per-task", type=int)
    ap.add_argument("--partition")
    ap.add_argument("--time-limit", default="7-00:00:00")
    ap.add_argument("--rdzv-host", help="slurm: rendezvous host (default: first allocated node)")
    ap.add_argument("--rdzv-port", type=int, default=29500)
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="slurm: export in the script")
    ap.add_argument("--poll", type=float, default=10.0, help="slurm: seconds between job polls")
    ap.add_argument("--timeout", type=float, help="give up (and cancel) after this many seconds")
    ap.add_argument("--entry", default=DEFAULT_ENTRY, help="trainer module (or .py script)")
    ap.add_argument("--write-ds-config", action="store_true",
                    help=f"regenerate {PAPER_DS_CONFIG.relative_to(ROOT)} and exit")
    a = ap.parse_args(argv)
    if a.write_ds_config:
        print(write_paper_ds_config())
        return 0
    if a.config is None or a.out is None:
        ap.error("--config and --out are required")
    env = dict(item.split("=", 1) for item in a.env)
    req = LaunchRequest(a.config, a.overrides, a.out, a.launcher, a.nproc or None, a.nnodes or None, entry=a.entry,
                        hostfile=a.hostfile, master_port=a.master_port, gpu=False if a.cpu else None,
                        slurm_nodes=a.slurm_nodes, cpus_per_task=a.cpus_per_task, partition=a.partition,
                        time_limit=a.time_limit, rdzv_host=a.rdzv_host, rdzv_port=a.rdzv_port, env=env)
    return run(req, a.dry_run, poll_s=a.poll, timeout_s=a.timeout)


if __name__ == "__main__":
    sys.exit(main())
