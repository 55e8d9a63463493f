"""The Slurm path for real: a one-node Slurm cluster from the Debian packages (munged, slurmctld,
slurmd with a project-local slurm.conf; infra/local/slurm/) comes up inside the private network
namespace of infra/local/isolated.sh; `python -m pvq_model.launch --launcher slurm` renders the
sbatch script for the debug config with 2 tasks as 2 "nodes" (srun + torchrun, c10d rendezvous on
127.0.0.1), submits it and polls it to the end; the test then checks the job's exit code and the
exported EMA weights, and that the daemons are gone afterwards (also when the test fails)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from helpers import DEBUG_CONFIG, ROOT

SLURM = ROOT / "infra" / "local" / "slurm"


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (the cluster's daemons name their state dir)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and d.name != str(os.getpid()):
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def slurm_state():
    """A short state dir (munge's socket path must stay under 108 bytes); the cluster in it is
    stopped at teardown by its pid files whatever happened, and the dir removed."""
    if shutil.which("sbatch") is None and os.geteuid() != 0:
        pytest.skip("Slurm packages missing and not root: sudo infra/local/slurm/install.sh")
    res = subprocess.run([str(SLURM / "install.sh")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"installing slurmctld slurmd slurm-client munge failed: {res.stderr}"
    state = Path(tempfile.mkdtemp(prefix="pvq-slurm-", dir="/tmp"))
    try:
        yield state
    finally:
        subprocess.run([str(SLURM / "stop.sh"), str(state)], capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def launch_argv(out: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pvq_model.launch", "--config", str(DEBUG_CONFIG), "--out", str(out),
            "--launcher", "slurm", "--cpu", "--nnodes", "2", "--nproc", "1", "--slurm-nodes", "1",
            "--cpus-per-task", "1", "--rdzv-host", "127.0.0.1", "--rdzv-port", str(port),
            "--env", "GLOO_SOCKET_IFNAME=lo", "--env", "OMP_NUM_THREADS=1",
            "--set", "train.steps=4", "--poll", "1", "--timeout", "200", *extra]


@pytest.mark.slow
def test_slurm_job_trains_on_two_nodes_and_exports_ema(isolated, slurm_state, tmp_path):
    out, failing = tmp_path / "run", tmp_path / "failing"
    bad_entry = tmp_path / "exit3.py"
    bad_entry.write_text("import sys\nsys.exit(3)\n")
    # one cluster session, two jobs: one whose ranks fail (its exit code must come back) and the
    # real training job
    script = (f"{' '.join(map(str, launch_argv(failing, isolated.free_port(), '--entry', str(bad_entry))))}\n"
              "echo \"failing_rc=$?\"\n"
              f"{' '.join(map(str, launch_argv(out, isolated.free_port())))}\n"
              "echo \"train_rc=$?\"\n")
    res = isolated.run([SLURM / "with_cluster.sh", slurm_state, "bash", "-c", script], timeout=330)
    log = res.stdout

    assert "slurm: cluster up" in log, log[-4000:]
    # the failing job: torchrun reports its failed rank with exit code 1, and so does the job
    assert re.search(r"slurm job (\d+): FAILED", log), log[-4000:]
    assert "failing_rc=1" in log, log[-4000:]
    # the training job
    m = re.search(r"submitted slurm job (\d+)", log.split("failing_rc=")[1])
    assert m, log[-4000:]
    job = m.group(1)
    job_log = (out / "launch" / f"slurm-{job}.out").read_text()
    assert f"slurm job {job}: COMPLETED" in log and "train_rc=0" in log, log[-3000:] + job_log[-5000:]
    assert f"pvq: job {job} on localhost, 2 x torchrun --nproc_per_node 1, rendezvous 127.0.0.1:" in job_log
    isolated.check_export(out, steps=4)
    t = yaml.safe_load((out / "export" / "config.yaml").read_text())["train"]
    assert (t["nodes"], t["gpus_per_node"], t["world_size"], t["global_batch"]) == (2, 1, 2, 2)
    # the EMA weights of the export are the last EMA checkpoint of the run
    from safetensors.torch import load_file

    ema = load_file(str(sorted((out / "checkpoints" / "ema").glob("*.safetensors"))[-1]))
    exported = load_file(str(out / "export" / "model.safetensors"))
    assert set(ema) == set(exported)
    assert all(bool((ema[k].float() == exported[k]).all()) for k in ema)
    # the cluster went down with the command (with_cluster.sh's trap), nothing of it is left
    assert "slurm: cluster in" in log and "stopped" in log
    assert processes_mentioning(str(slurm_state)) == []
    assert not list(slurm_state.glob("*/run/*.pid"))


@pytest.mark.slow
def test_cluster_stops_when_the_command_fails(isolated, slurm_state):
    res = isolated.run([SLURM / "with_cluster.sh", slurm_state, "bash", "-c",
                        'sinfo -h -N -o "%N %T %c"; test -S "$(dirname "$SLURM_CONF")/munge/run/munge.socket.2"; exit 7'],
                       timeout=120)
    assert res.returncode == 7, res.stdout
    cpus = os.cpu_count()
    assert f"localhost idle {cpus}" in res.stdout  # the node offers all cores, whatever OMP_NUM_THREADS says
    assert processes_mentioning(str(slurm_state)) == []
    assert not list(slurm_state.glob("*/run/*.pid"))
