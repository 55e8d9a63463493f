"""Resuming on another world size (issue 14, part 2): a checkpoint written by 2 ranks continues on
1 rank, and one written by 1 rank continues on 2 (pvq_model.train.reshard), on CPU gloo ranks.

One reference run trains 6 steps on 2 ranks (checkpoints at 2, 4, 6). A copy of its step-2
checkpoint is converted to 1 rank with ``pvq train --resume-from RUN --world-size 1`` and trains
steps 2-3 there (grad-accum 2: the same global batch); that run's step-4 checkpoint (1 rank) is
converted to 2 ranks and trains steps 4-5 under torchrun. Each resumed process records, right
after the trainer's own ``build_engines`` restored the checkpoint, the full fp32 masters, Adam
moments and EMA (DeepSpeed's ``safe_get_full_*`` gathers), and every micro-batch it trains on.

Checked: the restored values equal the saved ones bit for bit, the saved ones read by DeepSpeed's
own ``ds_to_universal`` (an independent reader of the ZeRO-3 partitions) and the EMA file; every
step's global batch holds exactly the clips of the reference run's step (nothing replayed or
skipped); the losses follow the reference within ``RTOL`` (fp32, the equivalence tests' tolerance
for 2 ranks x 1 vs 1 rank x grad-accum 2: the same batches, float32 rounding only).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pvq_model.train import reshard
from helpers import DEBUG_CONFIG, ROOT, rank_env

pytestmark = pytest.mark.slow
TORCHRUN = Path(sys.executable).with_name("torchrun")
SETS = ["train.precision=fp32", "train.persistence_threshold=0", "train.image_metrics_every=0", "train.steps=6",
        "train.checkpoint_every=2", "train.warmup_steps=2", "loss.adversarial_start_step=1"]
ONE_RANK = ["train.world_size=1", "train.gpus_per_node=1", "train.grad_accum=2"]
RTOL = 2e-3  # tests/train/test_equivalence.py: RTOL, same comparison (measured here: bit-equal)

# Runs the real trainer (`python -m pvq_model.train`, or the `pvq` CLI with "cli") and observes it:
# the restored state right after the trainer's own build_engines, and every micro-batch it consumes.
ENTRY = r'''
import hashlib, json, sys
from pathlib import Path
import torch
import pvq_model.train.loop as loop

out, how, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
real_build, real_batches = loop.build_engines, loop.training_batches

def build_engines(cfg, rank, world, batches, root, resume):
    engines = real_build(cfg, rank, world, batches, root, resume)
    if engines.tag is None:  # a fresh start: nothing restored
        return engines
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    state = {}
    for e, engine in (("g", engines.g), ("d", engines.d)):
        for n, p in engine.module.named_parameters():  # collectives: every rank, same order
            state[f"{e}/{n}/fp32"] = safe_get_full_fp32_param(p).detach().cpu().clone()
            for key in ("exp_avg", "exp_avg_sq"):
                state[f"{e}/{n}/{key}"] = safe_get_full_optimizer_state(p, key).detach().cpu().clone()
    state.update({f"ema/{n}": v for n, v in engines.ema.state_dict().items()})
    if rank == 0:
        torch.save({"tag": engines.tag, "start": engines.start_step, "world": world, "state": state},
                   out / "restored.pt")
    return engines

def training_batches(cfg, rank, world, start):
    with open(out / f"batches-rank{rank}.jsonl", "a") as log:
        for b in real_batches(cfg, rank, world, start):
            clips = [hashlib.sha1(v.contiguous().numpy().tobytes()).hexdigest() for v in b["video"]]
            log.write(json.dumps({"step": b["step"], "slot": b["slot"], "clips": clips}) + "\n")
            log.flush()
            yield b

real_train = loop.train

def train(*a, **kw):  # the CLI prints the step only: record the losses as python -m pvq_model.train does
    res = real_train(*a, **kw)
    (out / "result.json").write_text(json.dumps({"step": res.step, "losses": res.losses}))
    return res

loop.build_engines, loop.training_batches = build_engines, training_batches
if how == "cli":
    loop.train = train
    from flows.cli import app
    app(args, prog_name="pvq", standalone_mode=False)
else:
    from pvq_model.train.__main__ import main
    sys.exit(main(args))
'''


def _sets(*extra: str) -> list[str]:
    return [a for s in (*SETS, *extra) for a in ("--set", s)]


def _universal(engine_dir: Path, dest: Path) -> subprocess.Popen:
    """DeepSpeed's own ``ds_to_universal`` of one engine's checkpoint, in the background."""
    return subprocess.Popen([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                             str(engine_dir), "--output_folder", str(dest), "--num_extract_workers", "1",
                             "--num_merge_workers", "1"], env=rank_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _saved(universal: dict[str, Path], ema_file: Path) -> dict[str, torch.Tensor]:
    """The saved values, keyed like the restored dump: ``{g,d}/NAME/{fp32,exp_avg,exp_avg_sq}``, ``ema/NAME``."""
    out = {}
    for e, folder in universal.items():
        for d in sorted(p for p in (folder / "zero").iterdir() if p.is_dir()):  # one folder a parameter
            for key in ("fp32", "exp_avg", "exp_avg_sq"):
                v = torch.load(d / f"{key}.pt", weights_only=False)
                out[f"{e}/{d.name}/{key}"] = v["param"] if isinstance(v, dict) else v
    out.update({f"ema/{n}": v for n, v in load_file(ema_file).items()})
    return out


def _wait_universal(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def _steps(run: Path) -> dict[int, list[str]]:
    """Each step's global batch (the clips of every slot: rank x grad_accum + a), from the recorder.
    A slot read twice (the data-dependent init peeks at rank 0's first batch) must hold the same clips."""
    slots: dict[tuple[int, int], list[str]] = {}
    for f in sorted(run.glob("batches-rank*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            assert slots.setdefault((rec["step"], rec["slot"]), rec["clips"]) == rec["clips"]
    steps: dict[int, list[str]] = defaultdict(list)
    for (step, _), clips in sorted(slots.items()):
        steps[step] += clips
    return {s: sorted(c) for s, c in steps.items()}


def _copy_checkpoint(src: Path, dst: Path, tag: str) -> None:
    """A fresh run directory holding only checkpoint ``tag`` of ``src`` (as if the run died after it)."""
    for sub in ("g", "d", "rng"):
        shutil.copytree(src / "checkpoints" / sub / tag, dst / "checkpoints" / sub / tag)
    (dst / "checkpoints" / "ema").mkdir(parents=True)
    shutil.copy(src / "checkpoints" / "ema" / f"{tag}.safetensors", dst / "checkpoints" / "ema")
    (dst / "checkpoints" / "LATEST").write_text(tag)


def _check_restored(run: Path, saved: dict[str, torch.Tensor], world: int, start: int) -> None:
    dump = torch.load(run / "restored.pt", weights_only=True)
    assert (dump["world"], dump["start"]) == (world, start)
    restored = dump["state"]
    assert restored.keys() == saved.keys()
    assert {k.split("/")[0] for k in saved} == {"g", "d", "ema"}
    assert any(k.endswith("exp_avg_sq") and k.startswith("d/") for k in saved)  # both optimizers stepped
    unequal = [k for k in saved if not torch.equal(restored[k].view(-1), saved[k].view(-1).to(restored[k].dtype))]
    assert not unequal, f"{len(unequal)} of {len(saved)} tensors differ, e.g. {unequal[:3]}"


def _rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def test_checkpoint_resumes_two_to_one_and_one_to_two_ranks(isolated, tmp_path):
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    env = rank_env()
    ref, one, two = tmp_path / "ref", tmp_path / "one", tmp_path / "two"
    ref.mkdir()
    res = isolated.run([TORCHRUN, "--standalone", "--nproc_per_node=2", entry, ref, "module",
                        "--config", DEBUG_CONFIG, "--out", ref, *_sets()], timeout=400, env=env)
    assert res.returncode == 0, res.stdout[-5000:]
    ref_losses = json.loads((ref / "result.json").read_text())["losses"]
    ref_steps = _steps(ref)
    assert sorted(ref_steps) == list(range(6)) and all(len(c) == 2 for c in ref_steps.values())
    assert len({c for clips in ref_steps.values() for c in clips}) == 12  # 12 different clips

    # 2 ranks -> 1 rank, through `pvq train --resume-from RUN --world-size 1`
    _copy_checkpoint(ref, one, "step000000002")
    tag = "step000000002"
    oracle = {e: tmp_path / f"ref-{e}" for e in ("g", "d")}
    procs = [_universal(ref / "checkpoints" / e / tag, oracle[e]) for e in oracle]
    cli = subprocess.run([sys.executable, entry, one, "cli", "train", "--config", str(DEBUG_CONFIG),
                          "--resume-from", str(one), "--world-size", "1", "--max-steps", "2", *_sets()],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-5000:]
    said = " ".join(cli.stdout.split())
    assert "resume step000000002 (step 2) on 1 rank(s); it was written by 2:" in said
    assert "re-partitioned from 2 x" in said and "to 1 x" in said and "bit for bit" in said
    assert "global 2 = micro 1 x grad_accum 1 x 2 rank(s) -> micro 1 x grad_accum 2 x 1" in said
    assert "trained to step 4" in said
    assert (one / "checkpoints" / "g" / tag).is_dir()  # the original is kept beside the conversion
    _wait_universal(procs)
    _check_restored(one, _saved(oracle, ref / "checkpoints" / "ema" / f"{tag}.safetensors"), world=1, start=2)
    one_steps = _steps(one)
    assert sorted(one_steps) == [2, 3] and {s: one_steps[s] for s in (2, 3)} == {s: ref_steps[s] for s in (2, 3)}
    one_losses = json.loads((one / "result.json").read_text())["losses"]
    assert len(one_losses) == 2 and _rel(one_losses, ref_losses[2:4]) < RTOL, (one_losses, ref_losses)

    # 1 rank -> 2 ranks: the module API, then torchrun
    tag = "step000000004"
    _copy_checkpoint(one, two, tag)
    procs = [_universal(one / "checkpoints" / e / tag, oracle[e].with_name(f"one-{e}")) for e in oracle]
    report = reshard.reshard(two / "checkpoints", 2)
    assert (report.old_world, report.new_world, report.old_accum, report.new_accum) == (1, 2, 2, 1)
    assert (two / "checkpoints" / "LATEST").read_text() == "step000000004-world2"
    with pytest.raises(reshard.ReshardError, match=r"written by 2 rank\(s\), this run has 1.*--world-size 1"):
        reshard.check_world_size(two / "checkpoints", report.tag, 1)
    res = isolated.run([TORCHRUN, "--standalone", "--nproc_per_node=2", entry, two, "module",
                        "--config", DEBUG_CONFIG, "--out", two, "--max-steps", "2",
                        *_sets(*reshard.resume_overrides(report))], timeout=400, env=env)
    assert res.returncode == 0, res.stdout[-5000:]
    _wait_universal(procs)
    _check_restored(two, _saved({e: oracle[e].with_name(f"one-{e}") for e in oracle},
                                one / "checkpoints" / "ema" / f"{tag}.safetensors"), world=2, start=4)
    two_steps = _steps(two)
    assert sorted(two_steps) == [4, 5] and {s: two_steps[s] for s in (4, 5)} == {s: ref_steps[s] for s in (4, 5)}
    two_losses = json.loads((two / "result.json").read_text())["losses"]
    assert len(two_losses) == 2 and _rel(two_losses, ref_losses[4:6]) < RTOL, (two_losses, ref_losses)
    print(f"\nlosses vs reference: 2->1 ranks max rel {_rel(one_losses, ref_losses[2:4]):.2g}, "
          f"1->2 ranks {_rel(two_losses, ref_losses[4:6]):.2g}")


# bf16 (the paper's precision): DeepSpeed names the optimizer files bf16_zero_pp_rank_*, the module's
# weights and buffers are bf16, the masters and moments stay fp32. 2 steps (the discriminator steps at 1).
BF16 = ["train.precision=bf16", "data.scales=[[64,64]]", "train.steps=2", "train.warmup_steps=1"]


def test_bf16_checkpoint_reshards_two_to_one_rank(isolated, tmp_path, capsys):
    """A bf16 2-rank checkpoint, converted by ``python -m pvq_model.train.reshard RUN 1``, restores on
    1 rank (with the overrides it prints, which the config accepts) to the saved fp32 masters, Adam
    moments and EMA bit for bit; nothing is trained after the conversion (train.steps is reached)."""
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    env, run, tag = rank_env(), tmp_path / "run", "step000000002"
    run.mkdir()
    res = isolated.run([TORCHRUN, "--standalone", "--nproc_per_node=2", entry, run, "module",
                        "--config", DEBUG_CONFIG, "--out", run, *_sets(*BF16)], timeout=400, env=env)
    assert res.returncode == 0, res.stdout[-5000:]
    ckpts = run / "checkpoints"
    for e in ("g", "d"):
        assert sorted(p.name for p in (ckpts / e / tag).glob("*.pt")) == [
            f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)] + [
            f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)]
    module = torch.load(ckpts / "g" / tag / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert {v.dtype for v in module.values() if v.is_floating_point()} == {torch.bfloat16}
    oracle = {e: tmp_path / f"universal-{e}" for e in ("g", "d")}
    procs = [_universal(ckpts / e / tag, oracle[e]) for e in oracle]

    conv = subprocess.run([sys.executable, "-m", "pvq_model.train.reshard", str(run), "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert conv.returncode == 0, conv.stdout[-3000:] + conv.stderr[-5000:]
    hint = conv.stdout.splitlines()[-1]
    assert hint == ("resume with: --set train.world_size=1 --set train.grad_accum=2 --set train.global_batch=2 "
                    "--set train.nodes=1 --set train.gpus_per_node=1")
    assert "bit for bit" in conv.stdout and (ckpts / "LATEST").read_text() == f"{tag}-world1"
    for e in ("g", "d"):
        assert sorted(p.name for p in (ckpts / e / f"{tag}-world1").glob("*.pt")) == [
            "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"]
    # the hint for other layouts (the original tag is already 2 ranks: nothing is converted): the run's
    # train.gpus_per_node (2) gives 1 node by default, --nnodes overrides it
    for argv, overrides in (([], "train.nodes=1 --set train.gpus_per_node=2"),
                            (["--nnodes", "2"], "train.nodes=2 --set train.gpus_per_node=1")):
        capsys.readouterr()
        assert reshard.main([str(run), "2", "--tag", tag, *argv]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"resume with: --set train.world_size=2 --set train.grad_accum=1 --set train.global_batch=2 --set {overrides}")
    assert reshard.main([str(run), "2", "--tag", tag, "--nnodes", "3"]) == 2
    assert "does not split over 3 nodes" in capsys.readouterr().err
    assert (ckpts / "LATEST").read_text() == f"{tag}-world1"

    # restore on 1 rank with the printed overrides (the trainer's own build_engines; 0 steps to train)
    res = subprocess.run([sys.executable, entry, run, "module", "--config", DEBUG_CONFIG, "--out", run,
                          *_sets(*BF16), *hint.split()[2:]], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    _wait_universal(procs)
    _check_restored(run, _saved(oracle, ckpts / "ema" / f"{tag}.safetensors"), world=1, start=2)
    result = json.loads((run / "result.json").read_text())
    assert (result["step"], result["losses"]) == (2, [])

    # pvq train --resume-from RUN --world-size 2 (dry runs: nothing converted or started): a cluster
    # launcher spreads the ranks over nodes of the run's own train.gpus_per_node (1, as the 1-rank
    # restore above logged it); this machine's launcher keeps them on one node
    for launcher, want in (("slurm", "--nnodes=2 --nproc_per_node=1"), ("local", "--nnodes=1 --nproc_per_node=2")):
        plan = subprocess.run([str(TORCHRUN.with_name("pvq")), "train", "--config", str(DEBUG_CONFIG), *_sets(*BF16),
                               "--resume-from", str(run), "--world-size", "2", "--launcher", launcher, "--dry-run"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert plan.returncode == 0 and want in " ".join(plan.stdout.split()), plan.stdout[-3000:] + plan.stderr[-3000:]
