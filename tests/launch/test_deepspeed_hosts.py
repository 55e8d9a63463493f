"""The DeepSpeed runner over a hostfile of two hosts (issue 14, part 3).

The hosts are two network namespaces joined by a veth pair with private addresses (tests/helpers.py
``NetnsPair``: ``pvq-host-a`` 10.77.0.1 and ``pvq-host-b`` 10.77.0.2, named in each namespace's own
hosts file). ``python -m pvq_model.launch --launcher deepspeed`` runs the real DeepSpeed runner
(``deepspeed.launcher.runner``, default ``--launcher pdsh``) in this machine's namespace, as on a login
node: it checks the first host over ``ssh``, then starts ``deepspeed.launcher.launch`` on every host
through ``pdsh -w pvq-host-a,pvq-host-b`` with the node rank in ``%n``. Neither ssh nor pdsh is
installed here, so the test puts two small stand-ins first on PATH (:data:`PDSH`, :data:`SSH`): each
runs the command the runner built on the named host with ``ip netns exec`` in a fresh environment
(``env -i``, as a login shell would start), so a rank gets only what the runner exports (its
``MLFLOW*`` / ``PYTHON*`` variables and the ``.deepspeed_env`` file, DeepSpeed's way to pass the
rest). The ranks meet at ``--master_addr pvq-host-a`` over the veth and train the debug model 5 steps
with ZeRO-3 sharded over both hosts. The hosts share this machine's filesystem (as a cluster's shared
home or NFS would): the run directory is one folder.
"""

from __future__ import annotations

import sys

import pytest

from helpers import DEBUG_CONFIG, ROOT, TORCH_EXTENSIONS, NetnsPair, check_export, trainer_env

pytestmark = pytest.mark.slow

# `pdsh -S -f FANOUT -w host1,host2 COMMAND...`: COMMAND on every host at once (%n: the host's index,
# %h: its name), exit status the largest of theirs (-S), as pdsh's ssh module does.
PDSH = r'''#!PYTHON
import os, subprocess, sys
hosts = dict(h.split("=") for h in os.environ["PVQ_NETNS_HOSTS"].split(","))
args, workers, i = sys.argv[1:], [], 0
while i < len(args) and args[i].startswith("-"):
    if args[i] == "-w":
        workers = args[i + 1].split(",")
    i += 2 if args[i] in ("-w", "-f", "-R", "-l", "-u") else 1
command = " ".join(args[i:])
with open(os.environ["PVQ_REMOTE_LOG"], "a") as log:
    log.write(f"pdsh {workers} {command}\n")
procs = [subprocess.Popen(["ip", "netns", "exec", hosts[h], "env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin",
                           "HOME=/root", "bash", "-c", command.replace("%n", str(n)).replace("%h", h)])
         for n, h in enumerate(workers)]
sys.exit(max(p.wait() for p in procs))
'''

# `ssh [-o OPT] [-p PORT] HOST COMMAND...`: COMMAND on HOST (the runner's reachability check)
SSH = r'''#!PYTHON
import os, subprocess, sys
hosts = dict(h.split("=") for h in os.environ["PVQ_NETNS_HOSTS"].split(","))
args, i = sys.argv[1:], 0
while args[i].startswith("-"):
    i += 2 if args[i] in ("-o", "-p", "-l", "-i") else 1
host, command = args[i], " ".join(args[i + 1:])
with open(os.environ["PVQ_REMOTE_LOG"], "a") as log:
    log.write(f"ssh {host} {command}\n")
sys.exit(subprocess.call(["ip", "netns", "exec", hosts[host], "env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin",
                          "HOME=/root", "bash", "-c", command]))
'''


def test_deepspeed_runner_trains_across_two_hosts(netns_pair, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("pdsh", PDSH), ("ssh", SSH)):
        (bin_dir / name).write_text(text.replace("PYTHON", sys.executable, 1))
        (bin_dir / name).chmod(0o755)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{h} slots=1\n" for h in NetnsPair.HOSTS))
    # what every rank needs beyond the runner's exports: DeepSpeed reads it from DS_ENV_FILE
    ds_env = tmp_path / "deepspeed_env"
    ds_env.write_text(f"GLOO_SOCKET_IFNAME={NetnsPair.DEV}\nOMP_NUM_THREADS=1\nTORCH_EXTENSIONS_DIR={TORCH_EXTENSIONS}\n"
                      "DO_NOT_TRACK=1\nNO_PROXY=127.0.0.1,localhost\n")
    remote_log, out = tmp_path / "remote.log", tmp_path / "run"
    env = trainer_env(PATH=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", DS_ENV_FILE=str(ds_env),
                      PVQ_NETNS_HOSTS=",".join(f"{h}={ns}" for h, ns in zip(NetnsPair.HOSTS, netns_pair.names)),
                      PVQ_REMOTE_LOG=str(remote_log))
    env.pop("GLOO_SOCKET_IFNAME", None)
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "pvq_model.launch", "--config", str(DEBUG_CONFIG), "--out", str(out),
                           "--launcher", "deepspeed", "--cpu", "--hostfile", str(hostfile), "--nnodes", "2",
                           "--nproc", "1", "--master-port", "29511", "--set", "train.steps=5",
                           "--set", "train.checkpoint_every=5", "--timeout", "400"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=450)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-8000:]
    assert "world size 2, backend gloo" in text
    calls = remote_log.read_text().splitlines()
    assert calls[0] == f"ssh {NetnsPair.HOSTS[0]} hostname"  # the runner's ssh check, on the first host
    pdsh = [c for c in calls if c.startswith("pdsh ")]
    assert len(pdsh) == 1 and pdsh[0].startswith(f"pdsh {list(NetnsPair.HOSTS)} ")
    assert "--node_rank=%n" in pdsh[0] and f"--master_addr={NetnsPair.HOSTS[0]}" in pdsh[0]
    check_export(out, steps=5)
    # one world of 2 ranks, one per host: ZeRO-3 shards of both in the checkpoint
    shards = sorted(p.name for p in (out / "checkpoints" / "g").rglob("*model_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    from pvq_model.config import load_config

    t = load_config(out / "export" / "config.yaml").train
    assert (t.nodes, t.gpus_per_node, t.world_size) == (2, 1, 2)
