"""Launch commands for training: one process, ``local`` (torchrun on this machine), ``slurm`` (an
sbatch script of srun + torchrun with a c10d rendezvous) and ``deepspeed`` (the hostfile launcher).

Every launcher runs the same entry point, ``python -m pvq_model.train --config C --out RUN_DIR
[--set key=value ...]``, which reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from
the environment the launcher gives it. :func:`plan` builds the exact command (and, for Slurm, the
rendered script); :func:`run` prints it with the ZeRO-3 memory estimate (``dry_run``) or runs it and
returns its exit code (for Slurm: submits, polls the job and returns the job's exit code).

The launched geometry (nodes x processes per node) defaults to the config's ``train.nodes`` /
``train.gpus_per_node``; when the command line asks for another one, the launcher adds the matching
``train.nodes / gpus_per_node / world_size / global_batch`` overrides, so the resolved config the
run records is the one that ran (the global batch stays micro_batch x grad_accum x world size).

``python -m pvq_model.train.launch --help`` is a small command line over :func:`run`;
``--write-ds-config`` regenerates ``infra/deepspeed/zero3_paper.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, PVQConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
SBATCH_TEMPLATE = ROOT / "infra" / "slurm" / "pvq_train.sbatch"
HOSTFILE_EXAMPLE = ROOT / "infra" / "hostfile.example"
HOSTFILE = ROOT / "infra" / "hostfile"  # the site's copy of the example (not committed)
PAPER_CONFIG = ROOT / "configs" / "paper.yaml"
PAPER_DS_CONFIG = ROOT / "infra" / "deepspeed" / "zero3_paper.json"
PAPER_WORLD_SIZE = 64
DEFAULT_ENTRY = "pvq_model.train"
LAUNCHERS = ("single", "local", "slurm", "deepspeed")
GIB = 2**30

# Slurm job states after which a job never runs again (squeue/scontrol spelling).
SLURM_DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
              "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}


class LaunchError(RuntimeError):
    """A launch that cannot be built or submitted; the message says what to change."""


@dataclass(frozen=True)
class Geometry:
    nnodes: int
    nproc_per_node: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


@dataclass
class LaunchPlan:
    """Everything :func:`run` executes: ``argv`` with ``env`` added to the current environment; for
    Slurm also the rendered batch script (``argv`` is then the ``sbatch`` submission)."""

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


# ---------------------------------------------------------------------------------------------
# geometry and the trainer's arguments
# ---------------------------------------------------------------------------------------------
def default_geometry(cfg: PVQConfig, launcher: str, nproc: int | None, nnodes: int | None) -> Geometry:
    """``nproc`` (processes per node) and ``nnodes`` from the command line, else from the config:
    ``single`` is 1 x 1; ``local`` is one node running the config's whole world size; ``slurm`` and
    ``deepspeed`` use ``train.nodes`` x ``train.gpus_per_node`` (the paper: 8 x 8)."""
    t = cfg.train
    if launcher == "single":
        if (nproc or 1) != 1 or (nnodes or 1) != 1:
            raise LaunchError("launcher 'single' runs one process: drop --nproc/--nnodes or use --launcher local")
        return Geometry(1, 1)
    if launcher == "local":
        if (nnodes or 1) != 1:
            raise LaunchError("launcher 'local' runs on this machine only (--nnodes 1); "
                              "use --launcher slurm or deepspeed for several nodes")
        return Geometry(1, nproc or t.world_size)
    if launcher in ("slurm", "deepspeed"):
        return Geometry(nnodes or t.nodes, nproc or t.gpus_per_node)
    raise LaunchError(f"unknown launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")


def geometry_overrides(cfg: PVQConfig, geo: Geometry) -> list[str]:
    """Overrides that make the config describe the launched geometry (empty when it already does)."""
    t = cfg.train
    if (t.nodes, t.gpus_per_node) == (geo.nnodes, geo.nproc_per_node):
        return []
    return [f"train.nodes={geo.nnodes}", f"train.gpus_per_node={geo.nproc_per_node}",
            f"train.world_size={geo.world_size}",
            f"train.global_batch={t.micro_batch * t.grad_accum * geo.world_size}"]


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


# ---------------------------------------------------------------------------------------------
# the three launchers
# ---------------------------------------------------------------------------------------------
def local_command(entry_argv: list[str], nproc: int, *, python: str = sys.executable) -> list[str]:
    """``torchrun --standalone`` (as ``python -m torch.distributed.run``, the same interpreter)."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc_per_node={nproc}", "--max_restarts=0", *entry_argv]


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


def render_template(text: str, values: dict[str, str]) -> str:
    """Fill ``{{NAME}}`` placeholders; every placeholder must have a value and vice versa."""
    names = set(re.findall(r"\{\{([A-Z_]+)\}\}", text))
    missing, unused = names - values.keys(), values.keys() - names
    if missing or unused:
        raise LaunchError(f"sbatch template: missing values {sorted(missing)}, unknown {sorted(unused)}")
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], text)


def render_sbatch(entry_argv: list[str], geo: Geometry, *, out: Path, job_name: str = "pvq-train",
                  alloc_nodes: int | None = None, gpu: bool = True, cpus_per_task: int | None = None,
                  partition: str | None = None, time_limit: str = "7-00:00:00",
                  rdzv_host: str | None = None, rdzv_port: int = 29500, env: dict[str, str] | None = None,
                  python: str = sys.executable, workdir: Path = ROOT,
                  template: Path = SBATCH_TEMPLATE) -> str:
    """The batch script: ``geo.nnodes`` tasks (one per node; ``alloc_nodes`` < nnodes packs several
    "nodes" onto one machine, as the one-node test cluster does), each running
    ``torchrun --nnodes N --nproc_per_node P --rdzv_backend c10d`` with the rendezvous on the first
    allocated node (or ``rdzv_host``). Logs go to ``out/launch/slurm-JOBID.out``."""
    alloc = alloc_nodes or geo.nnodes
    if geo.nnodes % alloc:
        raise LaunchError(f"slurm: {geo.nnodes} torchrun nodes do not split evenly over {alloc} allocated nodes")
    extra = []
    if gpu:
        extra.append(f"#SBATCH --gpus-per-node={geo.nproc_per_node}")
    if cpus_per_task:
        extra.append(f"#SBATCH --cpus-per-task={cpus_per_task}")
    if partition:
        extra.append(f"#SBATCH --partition={partition}")
    exports = [f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    values = {
        "JOB_NAME": job_name,
        "ALLOC_NODES": str(alloc),
        "NNODES": str(geo.nnodes),
        "TASKS_PER_NODE": str(geo.nnodes // alloc),
        "NPROC_PER_NODE": str(geo.nproc_per_node),
        "WORKDIR": str(workdir),
        "LOG_DIR": str(out / "launch"),
        "TIME_LIMIT": time_limit,
        "EXTRA_DIRECTIVES": "\n".join(extra) if extra else "# (no GPUs requested: CPU run, gloo)",
        "ENV_EXPORTS": "\n".join(exports) if exports else "# (no extra environment)",
        "RDZV_HOST": shlex.quote(rdzv_host or ""),
        "RDZV_PORT": str(rdzv_port),
        "PYTHON": shlex.quote(python),
        "ENTRY_ARGS": shlex.join(entry_argv),
    }
    return render_template(Path(template).read_text(), values)


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------
def plan(config: Path, overrides: list[str], out: Path, launcher: str = "local", nproc: int | None = None,
         nnodes: int | None = None, *, entry: str = DEFAULT_ENTRY, python: str = sys.executable,
         gpu: bool | None = None, hostfile: Path | None = None, master_port: int = 29500,
         slurm_nodes: int | None = None, cpus_per_task: int | None = None, partition: str | None = None,
         time_limit: str = "7-00:00:00", rdzv_host: str | None = None, rdzv_port: int = 29500,
         env: dict[str, str] | None = None, write_script: bool = True) -> LaunchPlan:
    """Build (not run) the launch: validates the config with the geometry overrides, then the
    command of ``launcher``. ``gpu=None`` asks torch (``slurm``: assumes GPU nodes). For ``slurm``
    the script is written to ``out/launch/pvq_train.sbatch`` (also in a dry run, to be read)."""
    config, out = Path(config).resolve(), Path(out).resolve()
    overrides = list(overrides)
    cfg = load_config(config, overrides)
    geo = default_geometry(cfg, launcher, nproc, nnodes)
    overrides += geometry_overrides(cfg, geo)
    load_config(config, overrides)  # the resolved config the ranks will build must validate
    if gpu is None:
        gpu = True if launcher == "slurm" else detect_gpu()
    backend = "nccl" if gpu else "gloo"
    env = dict(env or {})
    if not gpu and launcher in ("local", "deepspeed") and geo.nnodes == 1:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: gloo talks over loopback only
    argv_entry = entry_args(entry, config, overrides, out)
    notes: list[str] = []
    if launcher == "single":
        return LaunchPlan(launcher, [python, *argv_entry], geo, overrides, backend, env)
    if launcher == "local":
        return LaunchPlan(launcher, local_command(argv_entry, geo.nproc_per_node, python=python), geo,
                          overrides, backend, env)
    if launcher == "deepspeed":
        if hostfile is None:
            hostfile = HOSTFILE if HOSTFILE.is_file() else HOSTFILE_EXAMPLE
        hostfile = Path(hostfile).resolve()
        if hostfile == HOSTFILE_EXAMPLE:
            notes.append(f"showing {HOSTFILE_EXAMPLE.relative_to(ROOT)}: copy it to "
                         f"{HOSTFILE.relative_to(ROOT)} with your node names (or pass --hostfile) to launch")
        argv = deepspeed_command(argv_entry, geo, hostfile, master_port=master_port, python=python)
        return LaunchPlan(launcher, argv, geo, overrides, backend, env, notes=notes, hostfile=hostfile)
    # slurm
    text = render_sbatch(argv_entry, geo, out=out, alloc_nodes=slurm_nodes, gpu=gpu, cpus_per_task=cpus_per_task,
                         partition=partition, time_limit=time_limit, rdzv_host=rdzv_host, rdzv_port=rdzv_port,
                         env=env, python=python, job_name=cfg.name)
    script = out / "launch" / "pvq_train.sbatch"
    if write_script:
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(text)
        script.chmod(0o755)
    return LaunchPlan(launcher, ["sbatch", "--parsable", str(script)], geo, overrides, backend, {}, script, text,
                      notes)


# ---------------------------------------------------------------------------------------------
# memory estimate (DeepSpeed's ZeRO-3 estimator on a meta-device model)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelStates:
    name: str
    total_params: int
    largest_layer_params: int
    gpu_bytes: int
    """ZeRO-3 model states per GPU without offload: fp32 master + Adam moments + bf16 params and
    grads, all sharded (18 bytes per parameter / world size) + the largest layer gathered."""


def count_params(module) -> tuple[int, int]:
    """(total parameters, largest single-module parameters); works on the meta device, where
    DeepSpeed's own ``model_to_params`` would merge all tensors (their data_ptr is 0)."""
    total = sum(p.numel() for p in module.parameters())
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules()), default=0)
    return total, largest


def memory_estimate(cfg: PVQConfig, geo: Geometry) -> tuple[list[ModelStates], str]:
    """Per-GPU ZeRO-3 model-state memory of the generator and the discriminator (each its own
    engine) on ``geo``, and DeepSpeed's estimator table (with its offload options) for both."""
    import torch
    from deepspeed.runtime.zero.stage3 import (estimate_zero3_model_states_mem_needs,
                                               estimate_zero3_model_states_mem_needs_all_cold)

    from ..discriminator import Discriminator3D
    from ..vae import PVQVAE

    with torch.device("meta"):
        models = {"generator": PVQVAE(cfg), "discriminator": Discriminator3D(cfg.discriminator)}
    rows = []
    for name, model in models.items():
        total, largest = count_params(model)
        _, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
            total, largest, num_gpus_per_node=geo.nproc_per_node, num_nodes=geo.nnodes,
            cpu_offload=False, cpu_offload_params=False, zero_init=True)
        rows.append(ModelStates(name, total, largest, gpu_bytes))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        estimate_zero3_model_states_mem_needs_all_cold(
            total_params=sum(r.total_params for r in rows),
            largest_layer_params=max(r.largest_layer_params for r in rows),
            num_gpus_per_node=geo.nproc_per_node, num_nodes=geo.nnodes)
    return rows, buf.getvalue()


def format_memory(rows: list[ModelStates], table: str, geo: Geometry) -> str:
    lines = [f"memory per GPU, ZeRO-3 model states on {geo.nnodes} node(s) x {geo.nproc_per_node} "
             f"= {geo.world_size} GPUs (no offload; activations not included):"]
    for r in rows:
        lines.append(f"  {r.name:<14} {r.total_params / 1e6:9.2f}M params, largest layer "
                     f"{r.largest_layer_params / 1e6:7.2f}M: {r.gpu_bytes / GIB:8.3f} GiB")
    total = sum(r.gpu_bytes for r in rows)
    lines.append(f"  {'total':<14} {sum(r.total_params for r in rows) / 1e6:9.2f}M params"
                 f"{'':>25}{total / GIB:8.3f} GiB")
    gen = rows[0].total_params
    lines.append(f"  + host memory per rank: the fp32 EMA of the generator, kept whole on every rank: "
                 f"{4 * gen / GIB:.3f} GiB")
    lines.append("DeepSpeed estimator (generator + discriminator):")
    lines += ["  " + line for line in table.rstrip().splitlines()]
    return "\n".join(lines)


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


# ---------------------------------------------------------------------------------------------
# Slurm: submit and poll
# ---------------------------------------------------------------------------------------------
def slurm_submit(script: Path) -> str:
    res = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if res.returncode != 0:
        raise LaunchError(f"sbatch {script} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout.strip().split(";")[0]


def slurm_job_state(job_id: str) -> tuple[str, int, str]:
    """(JobState, exit code, pending reason) from ``scontrol show job`` (``sacct`` once the
    controller forgot the job)."""
    res = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if res.returncode == 0 and "JobState=" in res.stdout:
        state = re.search(r"JobState=(\S+)", res.stdout).group(1)
        code = re.search(r"\bExitCode=(\d+):(\d+)", res.stdout)
        reason = re.search(r"\bReason=(\S+)", res.stdout)
        return state, int(code.group(1)) if code else 0, reason.group(1) if reason else "None"
    res2 = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"],
                          capture_output=True, text=True)
    if res2.returncode == 0 and res2.stdout.strip():
        state, code = res2.stdout.strip().splitlines()[0].split("|")
        return state.split()[0], int(code.split(":")[0]), "None"
    raise LaunchError(f"slurm job {job_id}: neither scontrol nor sacct knows it ({res.stderr.strip()})")


def slurm_wait(job_id: str, *, poll_s: float = 10.0, timeout_s: float | None = None,
               echo=print) -> int:
    """Poll until the job ends; returns its exit code (1 for a failed job that reports 0; 124
    after ``timeout_s``, with the job cancelled)."""
    start, last = time.monotonic(), None
    while True:
        state, code, reason = slurm_job_state(job_id)
        if (state, reason) != last:
            # e.g. "PENDING (PartitionConfig)": the request does not fit the partition
            echo(f"slurm job {job_id}: {state}" + (f" ({reason})" if reason not in ("None", "") else ""))
            last = state, reason
        if state in SLURM_DONE:
            return code if state == "COMPLETED" or code != 0 else 1
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            subprocess.run(["scancel", job_id], capture_output=True)
            echo(f"slurm job {job_id}: still {state} after {timeout_s:.0f}s; cancelled")
            return 124
        time.sleep(poll_s)


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
def run(config: Path, overrides: list[str], out: Path, launcher: str = "local", nproc: int | None = None,
        nnodes: int | None = None, dry_run: bool = False, *, poll_s: float = 10.0,
        timeout_s: float | None = None, estimate: bool = True, **plan_kwargs) -> int:
    """Launch training (or, with ``dry_run``, print the command and the per-GPU memory estimate)
    and return the exit code: the trainer's (single/local), the runner's (deepspeed) or the Slurm
    job's. ``nproc`` = processes per node and ``nnodes`` = nodes, 0/None = from the config.
    ``plan_kwargs`` go to :func:`plan` (hostfile, gpu, slurm_nodes, rdzv_port, entry, env, ...)."""
    try:
        p = plan(config, overrides, out, launcher, nproc or None, nnodes or None, **plan_kwargs)
    except (LaunchError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_plan(p), flush=True)
    if dry_run:
        if estimate:
            rows, table = memory_estimate(load_config(Path(config), p.overrides), p.geometry)
            print(format_memory(rows, table, p.geometry), flush=True)
        return 0
    if p.hostfile == HOSTFILE_EXAMPLE:
        print(f"error: {HOSTFILE_EXAMPLE} lists placeholder hosts; pass --hostfile", file=sys.stderr)
        return 2
    Path(out).mkdir(parents=True, exist_ok=True)
    if p.launcher == "slurm":
        job_id = slurm_submit(p.script)
        print(f"submitted slurm job {job_id}; log {Path(out).resolve() / 'launch' / f'slurm-{job_id}.out'}",
              flush=True)
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


# ---------------------------------------------------------------------------------------------
# the DeepSpeed config of the paper run
# ---------------------------------------------------------------------------------------------
def paper_ds_config_text(config: Path = PAPER_CONFIG, world_size: int = PAPER_WORLD_SIZE) -> str:
    """``build_ds_config`` for the paper recipe on 64 GPUs, as the JSON committed in
    ``infra/deepspeed/zero3_paper.json`` (2-space indent, trailing newline)."""
    from .ds_config import build_ds_config

    return json.dumps(build_ds_config(load_config(config), world_size), indent=2) + "\n"


def write_paper_ds_config(path: Path = PAPER_DS_CONFIG) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(paper_ds_config_text())
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pvq_model.train.launch", description=__doc__.split("\n\n")[0])
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
    return run(a.config, a.overrides, a.out, a.launcher, a.nproc, a.nnodes, a.dry_run, poll_s=a.poll,
               timeout_s=a.timeout, hostfile=a.hostfile, master_port=a.master_port, gpu=False if a.cpu else None,
               slurm_nodes=a.slurm_nodes, cpus_per_task=a.cpus_per_task, partition=a.partition,
               time_limit=a.time_limit, rdzv_host=a.rdzv_host, rdzv_port=a.rdzv_port, env=env, entry=a.entry)


if __name__ == "__main__":
    sys.exit(main())
