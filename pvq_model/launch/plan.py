"""A launch request -> the exact command: :func:`plan` validates the config with the geometry
overrides, then builds the command of the launcher (and, for Slurm, writes the rendered script);
:func:`format_plan` prints it with credentials redacted."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config
from .geometry import ROOT, Geometry, default_geometry, geometry_overrides
from .hostfile import HOSTFILE, HOSTFILE_EXAMPLE, deepspeed_command
from .slurm import render_sbatch
from .torchrun import local_command

DEFAULT_ENTRY = "pvq_model.train"


@dataclass
class LaunchRequest:
    """What to launch and how: the config and its overrides, the run directory and the launcher
    (``nproc`` processes per node and ``nnodes`` nodes, None: from the config), then the launcher's
    options. ``gpu=None`` asks torch (``slurm``: assumes GPU nodes); ``env`` is added to the ranks'
    environment (for Slurm: exported in the script); ``write_script``: write the sbatch script to
    ``out/launch/pvq_train.sbatch`` (also in a dry run, to be read)."""

    config: Path
    overrides: list[str] = field(default_factory=list)
    out: Path = Path("runs/run")
    launcher: str = "local"
    nproc: int | None = None
    nnodes: int | None = None
    entry: str = DEFAULT_ENTRY
    """The trainer module (``-m MODULE``) or a script path ending in .py."""
    python: str = sys.executable
    gpu: bool | None = None
    hostfile: Path | None = None
    """deepspeed: the MPI-style hostfile (default ``infra/hostfile``, else the example)."""
    master_port: int = 29500
    slurm_nodes: int | None = None
    """slurm: machines to allocate (default ``nnodes``; fewer packs several "nodes" onto one)."""
    cpus_per_task: int | None = None
    partition: str | None = None
    time_limit: str = "7-00:00:00"
    rdzv_host: str | None = None
    """slurm: the rendezvous host (default: the allocation's first node)."""
    rdzv_port: int = 29500
    env: dict[str, str] = field(default_factory=dict)
    write_script: bool = True


@dataclass
class LaunchPlan:
    """Everything :func:`pvq_model.launch.cli.run` executes: ``argv`` with ``env`` added to the
    current environment; for Slurm also the rendered batch script (``argv`` is then the ``sbatch``
    submission)."""

    launcher: str
    argv: list[str]
    geometry: Geometry
    overrides: list[str]
    backend: str
    env: dict[str, str] = field(default_factory=dict)
    script: Path | None = None
    script_text: str | None = None
    notes: list[str] = field(default_factory=list)
    hostfile: Path | None = None

    @property
    def command(self) -> str:
        """The command as one shell line, ready to paste (environment assignments first)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


def entry_args(entry: str, config: Path, overrides: list[str], out: Path) -> list[str]:
    """The trainer's argv after the interpreter/launcher: ``-m MODULE`` (or a script path ending
    in .py), then ``--config C --out DIR --set k=v ...``."""
    head = [entry] if entry.endswith(".py") else ["-m", entry]
    tail = ["--config", str(config), "--out", str(out)]
    for item in overrides:
        tail += ["--set", item]
    return head + tail


def detect_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def plan(req: LaunchRequest) -> LaunchPlan:
    """Build (not run) the launch of ``req``: validates the config with the geometry overrides, then
    the command of ``req.launcher``."""
    config, out = Path(req.config).resolve(), Path(req.out).resolve()
    overrides = list(req.overrides)
    cfg = load_config(config, overrides)
    geo = default_geometry(cfg, req.launcher, req.nproc, req.nnodes)
    overrides += geometry_overrides(cfg, geo)
    load_config(config, overrides)  # the resolved config the ranks will build must validate
    gpu = req.gpu
    if gpu is None:
        gpu = True if req.launcher == "slurm" else detect_gpu()
    backend = "nccl" if gpu else "gloo"
    env = dict(req.env or {})
    if not gpu and req.launcher in ("local", "deepspeed") and geo.nnodes == 1:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: gloo talks over loopback only
    argv_entry = entry_args(req.entry, config, overrides, out)
    notes: list[str] = []
    if req.launcher == "single":
        return LaunchPlan(req.launcher, [req.python, *argv_entry], geo, overrides, backend, env)
    if req.launcher == "local":
        return LaunchPlan(req.launcher, local_command(argv_entry, geo.nproc_per_node, python=req.python), geo,
                          overrides, backend, env)
    if req.launcher == "deepspeed":
        hostfile = req.hostfile
        if hostfile is None:
            hostfile = HOSTFILE if HOSTFILE.is_file() else HOSTFILE_EXAMPLE
        hostfile = Path(hostfile).resolve()
        if hostfile == HOSTFILE_EXAMPLE:
            notes.append(f"showing {HOSTFILE_EXAMPLE.relative_to(ROOT)}: copy it to "
                         f"{HOSTFILE.relative_to(ROOT)} with your node names (or pass --hostfile) to launch")
        argv = deepspeed_command(argv_entry, geo, hostfile, master_port=req.master_port, python=req.python)
        return LaunchPlan(req.launcher, argv, geo, overrides, backend, env, notes=notes, hostfile=hostfile)
    # slurm
    text = render_sbatch(argv_entry, geo, out=out, alloc_nodes=req.slurm_nodes, gpu=gpu,
                         cpus_per_task=req.cpus_per_task, partition=req.partition, time_limit=req.time_limit,
                         rdzv_host=req.rdzv_host, rdzv_port=req.rdzv_port, env=env, python=req.python,
                         job_name=cfg.name)
    script = out / "launch" / "pvq_train.sbatch"
    if req.write_script:
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(text)
        script.chmod(0o700)  # it may export the environment the flow gave it (MLFLOW_TRACKING_URI)
    return LaunchPlan(req.launcher, ["sbatch", "--parsable", str(script)], geo, overrides, backend, {}, script, text,
                      notes)


def format_plan(p: LaunchPlan) -> str:
    g = p.geometry
    lines = [f"launcher: {p.launcher} ({g.nnodes} node(s) x {g.nproc_per_node} process(es) = world size "
             f"{g.world_size}, backend {p.backend})"]
    lines += [f"note: {n}" for n in p.notes]
    if p.overrides:
        lines.append("overrides: " + " ".join(p.overrides))
    if p.script is not None:
        lines.append(f"sbatch script: {p.script}")
    lines.append("command:")
    lines.append("  " + p.command)
    if p.script_text is not None:
        lines.append(f"--- {p.script}")
        lines.append(p.script_text.rstrip())
        lines.append("---")
    from data_prep.storage import redact

    return redact("\n".join(lines))  # printed: no credentials of a tracking / data URI
