"""``slurm``: the batch script (``infra/slurm/pvq_train.sbatch``, a Jinja2 template rendered with
every variable required and none unknown), its submission and the poll until the job ends."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .geometry import ROOT, Geometry, LaunchError

SBATCH_TEMPLATE = ROOT / "infra" / "slurm" / "pvq_train.sbatch"

# Slurm job states after which a job never runs again (squeue/scontrol spelling).
SLURM_DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
              "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}


def render_template(text: str, values: dict[str, str]) -> str:
    """Fill the ``{{NAME}}`` variables of a Jinja2 template (no autoescaping: a shell script); every
    variable must have a value and every value a variable."""
    import jinja2
    from jinja2 import meta

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    names = meta.find_undeclared_variables(env.parse(text))
    missing, unused = names - values.keys(), values.keys() - names
    if missing or unused:
        raise LaunchError(f"sbatch template: missing values {sorted(missing)}, unknown {sorted(unused)}")
    return env.from_string(text).render(**values)


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
