"""Launcher command building (pvq_model.launch). The commands are checked by the parsers of
the programs that run them (torchrun, the deepspeed runner, bash) and, in the slow tests, by running
them inside infra/local/isolated.sh: the real trainer for `local` and `deepspeed`, a distributed
probe for the exact environment each rank receives."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pvq_model.config import load_config
from pvq_model.launch import geometry, hostfile, memory, slurm
from pvq_model.launch.cli import run
from pvq_model.launch.geometry import Geometry, LaunchError
from pvq_model.launch.plan import LaunchRequest, plan
from pvq_model.train import ds_config
from helpers import DEBUG_CONFIG, ROOT

PYTHON = sys.executable
PAPER = ROOT / "configs" / "paper.yaml"


def torchrun_args(argv: list[str]):
    """Parse a ``python -m torch.distributed.run ...`` command with torchrun's own parser."""
    from torch.distributed.run import get_args_parser

    i = argv.index("torch.distributed.run")
    return get_args_parser().parse_args(argv[i + 1:])


def trainer_args(args: list[str]):
    """Parse the trainer's arguments with the trainer's own option names."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    return p.parse_args(args)


def sbatch_directives(text: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^#SBATCH --([\w-]+)=(\S+)$", text, re.M))


def srun_command(text: str) -> list[str]:
    """The srun line of a rendered script, continuation lines joined, shell variables kept."""
    joined = text.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.strip().startswith("srun "))
    return shlex.split(line)


# ------------------------------------------------------------------------------ geometry
def test_default_geometry_follows_config_and_launcher():
    paper, debug = load_config(PAPER), load_config(DEBUG_CONFIG)
    assert geometry.default_geometry(paper, "slurm", None, None) == Geometry(8, 8)
    assert geometry.default_geometry(paper, "deepspeed", None, None).world_size == 64
    assert geometry.default_geometry(debug, "local", None, None) == Geometry(1, 2)
    assert geometry.default_geometry(debug, "slurm", 1, 2) == Geometry(2, 1)
    assert geometry.default_geometry(debug, "single", None, None) == Geometry(1, 1)
    with pytest.raises(LaunchError, match="this machine only"):
        geometry.default_geometry(debug, "local", 2, 2)
    with pytest.raises(LaunchError, match="unknown launcher"):
        geometry.default_geometry(debug, "mpirun", None, None)


def test_geometry_overrides_keep_the_config_valid_and_the_batch_arithmetic():
    paper = load_config(PAPER)
    assert geometry.geometry_overrides(paper, Geometry(8, 8)) == []
    extra = geometry.geometry_overrides(paper, Geometry(1, 8))
    cfg = load_config(PAPER, extra)  # validates micro x accum x world == global
    t = cfg.train
    assert (t.nodes, t.gpus_per_node, t.world_size) == (1, 8, 8)
    assert t.global_batch == 4 * 4 * 8 == 128
    p = plan(LaunchRequest(DEBUG_CONFIG, ["train.steps=4"], Path("/tmp/unused"), "slurm", 1, 2, gpu=False, write_script=False))
    assert p.overrides[0] == "train.steps=4"
    assert load_config(DEBUG_CONFIG, p.overrides).train.world_size == 2


# ------------------------------------------------------------------------------ local
def test_local_command_is_torchrun_standalone(tmp_path):
    p = plan(LaunchRequest(DEBUG_CONFIG, ["train.steps=4"], tmp_path / "run", "local", gpu=False))
    assert p.argv[:3] == [PYTHON, "-m", "torch.distributed.run"]
    a = torchrun_args(p.argv)
    assert a.standalone and a.nnodes == "1" and a.nproc_per_node == "2"
    assert a.module and a.training_script == "pvq_model.train"
    t = trainer_args(a.training_script_args)
    assert t.config == DEBUG_CONFIG.resolve() and t.out == (tmp_path / "run").resolve()
    assert t.overrides == ["train.steps=4"]
    assert p.backend == "gloo" and p.env == {"GLOO_SOCKET_IFNAME": "lo"}
    assert plan(LaunchRequest(DEBUG_CONFIG, [], tmp_path, "local", gpu=True)).backend == "nccl"
    assert p.command.startswith("GLOO_SOCKET_IFNAME=lo ") and shlex.split(p.command)[1:] == p.argv


def test_single_runs_the_entry_point_directly(tmp_path):
    p = plan(LaunchRequest(DEBUG_CONFIG, [], tmp_path, "single", gpu=False))
    assert p.argv[:3] == [PYTHON, "-m", "pvq_model.train"]
    # one process: the recorded config says so and still validates
    cfg = load_config(DEBUG_CONFIG, p.overrides)
    assert (cfg.train.world_size, cfg.train.global_batch) == (1, 1)


# ------------------------------------------------------------------------------ deepspeed
def test_deepspeed_command_parses_with_the_runner(tmp_path):
    from deepspeed.launcher.runner import fetch_hostfile, parse_args

    p = plan(LaunchRequest(PAPER, [], tmp_path, "deepspeed", hostfile=hostfile.HOSTFILE_EXAMPLE, gpu=True))
    assert p.argv[:3] == [PYTHON, "-m", "deepspeed.launcher.runner"]
    a = parse_args(p.argv[3:])
    assert (a.num_nodes, a.num_gpus, a.master_addr) == (8, 8, "worker-0")
    assert a.module and a.no_local_rank and not a.no_ssh_check
    assert a.user_script == "pvq_model.train"
    assert trainer_args(a.user_args).config == PAPER.resolve()
    pool = fetch_hostfile(a.hostfile)
    assert list(pool.items()) == [(f"worker-{i}", 8) for i in range(8)]
    assert hostfile.read_hostfile(hostfile.HOSTFILE_EXAMPLE) == [(f"worker-{i}", 8) for i in range(8)]


def test_deepspeed_refuses_to_launch_on_the_example_hostfile(tmp_path, capsys):
    assert run(LaunchRequest(PAPER, [], tmp_path, "deepspeed", hostfile=hostfile.HOSTFILE_EXAMPLE, gpu=True),
               dry_run=False) == 2
    assert "placeholder hosts; pass --hostfile" in capsys.readouterr().err
    assert not (tmp_path / "launch").exists()


def test_deepspeed_hostfile_errors_name_the_problem(tmp_path):
    hf = tmp_path / "hostfile"
    hf.write_text("a slots=8\nb slots=4\n")
    with pytest.raises(LaunchError, match="2 host"):
        plan(LaunchRequest(PAPER, [], tmp_path, "deepspeed", hostfile=hf, gpu=True))
    with pytest.raises(LaunchError, match="b have fewer than 8 slots"):
        plan(LaunchRequest(PAPER, [], tmp_path, "deepspeed", 8, 2, hostfile=hf, gpu=True))
    hf.write_text("a 8\n")
    with pytest.raises(LaunchError, match=r"hostfile:1: expected 'HOST slots=N'"):
        hostfile.read_hostfile(hf)


# ------------------------------------------------------------------------------ slurm
def test_sbatch_script_for_the_paper_run(tmp_path):
    p = plan(LaunchRequest(PAPER, [], tmp_path / "run", "slurm"))
    text = p.script.read_text()
    assert text == p.script_text and "{{" not in text
    assert p.argv == ["sbatch", "--parsable", str(p.script)]
    d = sbatch_directives(text)
    assert (d["nodes"], d["ntasks"], d["ntasks-per-node"], d["gpus-per-node"]) == ("8", "8", "1", "8")
    assert d["output"] == f"{(tmp_path / 'run').resolve()}/launch/slurm-%j.out"
    assert d["chdir"] == str(ROOT)
    assert subprocess.run(["bash", "-n", str(p.script)]).returncode == 0
    srun = srun_command(text)
    assert srun[:4] == ["srun", "--kill-on-bad-exit=1", "--ntasks=8", "--ntasks-per-node=1"]
    a = torchrun_args(srun)
    assert (a.nnodes, a.nproc_per_node, a.rdzv_backend) == ("8", "8", "c10d")
    assert a.rdzv_endpoint == "$RDZV_HOST:$RDZV_PORT" and a.rdzv_id == "$SLURM_JOB_ID"
    assert a.training_script == "pvq_model.train" and a.max_restarts == 0
    assert trainer_args(a.training_script_args).out == (tmp_path / "run").resolve()


def test_sbatch_script_packs_nodes_for_the_one_node_cluster(tmp_path):
    p = plan(LaunchRequest(DEBUG_CONFIG, ["train.steps=4"], tmp_path, "slurm", 1, 2, gpu=False, slurm_nodes=1,
                           cpus_per_task=1, rdzv_host="127.0.0.1", rdzv_port=29577,
                           env={"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}))
    d = sbatch_directives(p.script_text)
    assert (d["nodes"], d["ntasks"], d["ntasks-per-node"], d["cpus-per-task"]) == ("1", "2", "2", "1")
    assert "gpus-per-node" not in d
    assert "RDZV_HOST=127.0.0.1\n" in p.script_text and "RDZV_PORT=29577\n" in p.script_text
    assert "export GLOO_SOCKET_IFNAME=lo\n" in p.script_text
    with pytest.raises(LaunchError, match="do not split evenly"):
        plan(LaunchRequest(DEBUG_CONFIG, [], tmp_path, "slurm", 1, 3, gpu=False, slurm_nodes=2))
    # the exports and the rendezvous line really run in bash: execute the script's prologue
    prologue = p.script_text.split("echo \"pvq:")[0]
    res = subprocess.run(["bash", "-c", prologue.replace("set -euo pipefail", "set -eu")
                          + 'echo "$RDZV_HOST:$RDZV_PORT $GLOO_SOCKET_IFNAME $OMP_NUM_THREADS"'],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert res.stdout.strip() == "127.0.0.1:29577 lo 1", res.stderr


def test_template_placeholders_must_all_be_filled():
    assert slurm.render_template("a {{X}} b", {"X": "1"}) == "a 1 b"
    with pytest.raises(LaunchError, match=r"missing values \['Y'\]"):
        slurm.render_template("{{X}}{{Y}}", {"X": "1"})
    with pytest.raises(LaunchError, match=r"unknown \['Z'\]"):
        slurm.render_template("{{X}}", {"X": "1", "Z": "2"})


# ------------------------------------------------------------------------------ DeepSpeed config
def test_committed_paper_ds_config_is_the_builders_output():
    committed = ds_config.PAPER_DS_CONFIG.read_text()
    assert committed == ds_config.paper_ds_config_text(), \
        "infra/deepspeed/zero3_paper.json is stale: python -m pvq_model.launch --write-ds-config"
    ds = json.loads(committed)
    assert ds["train_batch_size"] == 4 * 4 * 64 == 1024
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["reduce_bucket_size"] == 5 * 2**30 // 2  # elements of bf16 grads
    assert ds["gradient_clipping"] == 1.0 and ds["bf16"]["enabled"] is True
    assert ds["scheduler"]["params"]["total_num_steps"] == 800_000


# ------------------------------------------------------------------------------ dry run, memory
def test_count_params_on_meta_matches_a_real_model_and_deepspeed():
    from deepspeed.runtime.zero.stage3 import model_to_params

    from pvq_model.vae import PVQVAE

    cfg = load_config(DEBUG_CONFIG)
    torch.manual_seed(0)
    real = PVQVAE(cfg)
    with torch.device("meta"):
        meta = PVQVAE(cfg)
    assert memory.count_params(meta) == memory.count_params(real) == model_to_params(real)


def test_dry_run_prints_the_command_and_zero3_memory(tmp_path, capsys):
    rc = run(LaunchRequest(PAPER, [], tmp_path / "run", "slurm"), dry_run=True)
    out = capsys.readouterr().out
    assert rc == 0
    p = plan(LaunchRequest(PAPER, [], tmp_path / "run", "slurm", write_script=False))
    assert "  " + p.command + "\n" in out
    assert "#SBATCH --nodes=8" in out and "world size 64" in out
    rows, _ = memory.memory_estimate(load_config(PAPER), Geometry(8, 8))
    gen, disc = rows
    assert gen.total_params > 100e6 and disc.total_params > 0
    for r in rows:  # ZeRO-3, no offload: 18 bytes per parameter sharded over 64 GPUs + largest layer
        assert r.gpu_bytes == 4 * r.largest_layer_params + int(18 * r.total_params / 64)
        assert f"{r.gpu_bytes / 2**30:8.3f} GiB" in out
    assert "DeepSpeed estimator" in out and "offload_param=none, offload_optimizer=none" in out
    assert not (tmp_path / "run" / "export").exists()  # nothing ran


def test_bad_override_is_reported_not_launched(tmp_path, capsys):
    rc = run(LaunchRequest(DEBUG_CONFIG, ["train.nope=1"], tmp_path, "local"), dry_run=False)
    err = capsys.readouterr().err
    assert rc == 2 and "train.nope: unknown key" in err
    assert not (tmp_path / "launch").exists()


# ------------------------------------------------------------------------------ running them
@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "deepspeed"])
def test_launchers_give_each_rank_its_environment(launcher, isolated, probe_entry, tmp_path):
    out = tmp_path / "run"
    hf = tmp_path / "hostfile"
    hf.write_text("localhost slots=2\n")
    port = isolated.free_port()
    res = isolated.run([PYTHON, "-m", "pvq_model.launch", "--config", DEBUG_CONFIG, "--out", out,
                        "--launcher", launcher, "--cpu", "--entry", probe_entry, "--hostfile", hf,
                        "--master-port", port, "--set", "train.steps=4", "--timeout", 120], timeout=150)
    assert res.returncode == 0, res.stdout[-4000:]
    ranks = isolated.read_probe(out)
    assert sorted(ranks) == [0, 1]
    for r, rec in ranks.items():
        assert rec["world"] == 2 and rec["sum"] == 3.0  # the all-reduce saw both ranks
        assert rec["env"]["RANK"] == str(r) and rec["env"]["LOCAL_RANK"] == str(r)
        assert rec["env"]["WORLD_SIZE"] == "2" and rec["env"]["GLOO_SOCKET_IFNAME"] == "lo"
        assert rec["sets"] == ["train.steps=4"] and rec["out"] == str(out.resolve())
        assert rec["config"] == str(DEBUG_CONFIG.resolve())
    if launcher == "deepspeed":
        assert {rec["env"]["MASTER_ADDR"] for rec in ranks.values()} == {"127.0.0.1"}
        assert {rec["env"]["MASTER_PORT"] for rec in ranks.values()} == {str(port)}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["single", "local", "deepspeed"])
def test_launchers_run_the_real_trainer(launcher, isolated, tmp_path):
    out = tmp_path / "run"
    hf = tmp_path / "hostfile"
    hf.write_text("localhost slots=2\n")
    res = isolated.run([PYTHON, "-m", "pvq_model.launch", "--config", DEBUG_CONFIG, "--out", out,
                        "--launcher", launcher, "--cpu", "--hostfile", hf, "--master-port", isolated.free_port(),
                        "--set", "train.steps=4", "--timeout", 200], timeout=240)
    assert res.returncode == 0, res.stdout[-6000:]
    world = 1 if launcher == "single" else 2
    assert f"world size {world}, backend gloo" in res.stdout
    isolated.check_export(out, steps=4)
    t = load_config(out / "export" / "config.yaml").train
    assert (t.world_size, t.global_batch) == (world, world)
