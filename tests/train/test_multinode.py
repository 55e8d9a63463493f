"""Two "nodes" on one machine: two torchrun agents (--nnodes 2, --node_rank 0 and 1) meet in a c10d
rendezvous on 127.0.0.1 and run the real trainer as one world of 2 ranks, both inside the same
private network namespace (infra/local/isolated.sh), so every c10d name lookup stays local."""

from __future__ import annotations

import shlex
import sys

import pytest

from helpers import DEBUG_CONFIG


@pytest.mark.slow
def test_two_node_c10d_rendezvous_trains_and_exports(isolated, tmp_path):
    out, port = tmp_path / "run", isolated.free_port()
    overrides = ["train.steps=4", "train.nodes=2", "train.gpus_per_node=1"]

    def agent(node_rank: int) -> str:
        argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node_rank}",
                "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                "--rdzv_id=pvq-multinode-test", "--max_restarts=0",
                "-m", "pvq_model.train", "--config", str(DEBUG_CONFIG), "--out", str(out)]
        for o in overrides:
            argv += ["--set", o]
        return shlex.join(argv) + f" > {shlex.quote(str(tmp_path / f'node{node_rank}.log'))} 2>&1"

    # both agents start together in one namespace; the script exits with the first failure
    script = (f"{agent(0)} & a=$!\n{agent(1)} & b=$!\n"
              "wait $a; ra=$?; wait $b; rb=$?\necho \"node0=$ra node1=$rb\"\n"
              "[ $ra -eq 0 ] && [ $rb -eq 0 ]\n")
    res = isolated.run(["bash", "-c", script], timeout=240)
    logs = "\n".join(f"--- node{i}\n" + (tmp_path / f"node{i}.log").read_text()[-3000:] for i in (0, 1))
    assert res.returncode == 0, res.stdout + logs
    assert "node0=0 node1=0" in res.stdout
    isolated.check_export(out, steps=4)
    # the two agents were one world of 2 ranks: ZeRO-3 shards from both ranks in the checkpoint
    shards = sorted(p.name for p in (out / "checkpoints" / "g").rglob("*model_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    import yaml

    t = yaml.safe_load((out / "export" / "config.yaml").read_text())["train"]
    assert (t["nodes"], t["gpus_per_node"], t["world_size"]) == (2, 1, 2)
