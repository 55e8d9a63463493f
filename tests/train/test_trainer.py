"""DeepSpeed trainer: LR schedule, DeepSpeed config arithmetic, EMA rule, and real 2-rank ZeRO-3
runs on CPU (torchrun, gloo, bf16) inside the loopback-only namespace of infra/local/isolated.sh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pvq_model.config import load_config
from pvq_model.train.ds_config import build_ds_config, reduce_bucket_elements
from pvq_model.train.ema import EMA
from helpers import DEBUG_CONFIG, ISOLATED, ROOT, trainer_env



@pytest.mark.parametrize("step, lr", [(0, 0.0), (5_000, 5e-6), (10_000, 1e-5), (405_000, 5e-6), (800_000, 0.0)])
def test_paper_lr_schedule(step, lr, deepspeed_lr_at):
    cfg = load_config(ROOT / "configs" / "paper.yaml")
    assert deepspeed_lr_at(cfg, step) == pytest.approx(lr, abs=1e-15)


def test_deepspeed_config_arithmetic():
    cfg = load_config(ROOT / "configs" / "paper.yaml")
    ds = build_ds_config(cfg, world_size=64)
    assert ds["train_batch_size"] == 4 * 4 * 64 == 1024
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 4
    # 5 GiB of bf16 gradients, in elements
    assert ds["zero_optimization"]["reduce_bucket_size"] == 5 * 2**30 // 2 == 2_684_354_560
    assert reduce_bucket_elements(5, "fp32") == 5 * 2**30 // 4
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["gradient_clipping"] == 1.0
    assert ds["scheduler"]["params"] == {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-5, "warmup_num_steps": 10_000,
                                         "total_num_steps": 800_000, "warmup_type": "linear"}
    assert build_ds_config(cfg, world_size=2)["train_batch_size"] == 32


def test_ema_update_rule():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    p0 = {n: p.detach().clone() for n, p in lin.named_parameters()}
    ema = EMA(lin, decay=0.999)
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(1.0)
    ema.update(lin)
    for n, p in lin.named_parameters():
        assert torch.allclose(ema.shadow[n], 0.999 * p0[n] + 0.001 * p.detach(), atol=1e-7)
        assert ema.shadow[n].dtype == torch.float32


def _train(out: Path, *sets: str, nproc: int = 2, extra: tuple[str, ...] = ()) -> dict:
    env = trainer_env()  # the runs log to sqlite in their run directory
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(ISOLATED), str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "pvq_model.train",
           "--config", str(DEBUG_CONFIG), "--out", str(out),
           "--set", "train.persistence_threshold=0", *[a for s in sets for a in ("--set", s)], *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_two_ranks_zero3_bf16_loss_decreases_on_a_fixed_batch(tmp_path, deepspeed_lr_at):
    res = _train(tmp_path / "run", "train.fixed_batch=true", "train.steps=16", "train.warmup_steps=2")
    losses = res["losses"]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < losses[0] * 0.8, losses
    # the export loads without deepspeed and reconstructs
    from pvq_model.vae import PVQVAE

    model = PVQVAE.from_pretrained(tmp_path / "run" / "export")
    x = torch.rand(1, 3, 16, 64, 64) * 2 - 1
    assert model(x).recon.shape == x.shape
    # MLflow: config params, git commit tag, per-step metrics, the DeepSpeed config artifact
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    run = client.get_run(res["mlflow_run_id"])
    assert run.data.params["train.lr"] == "0.001" and run.data.params["train.seed"] == "42"
    assert len(run.data.tags["git_commit"]) in (7, 40) or run.data.tags["git_commit"] == "unknown"
    assert run.data.tags["version.torch"].startswith("2.13.0")
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(16))
    assert [m.value for m in history] == pytest.approx(losses)
    # the engine's LR follows the schedule exactly: 0 at step 0, warm-up over 2 steps, linear decay
    cfg = load_config(DEBUG_CONFIG, ["train.steps=16", "train.warmup_steps=2"])
    lrs = [m.value for m in client.get_metric_history(run.info.run_id, "lr")]
    assert lrs == pytest.approx([deepspeed_lr_at(cfg, s) for s in range(16)], abs=1e-12)
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1e-3)
    psnr = [m.value for m in client.get_metric_history(run.info.run_id, "train/psnr")]
    ssim = [m.value for m in client.get_metric_history(run.info.run_id, "train/ssim")]
    assert len(psnr) == len(ssim) == 16 and psnr[-1] > psnr[0] and all(-1 <= v <= 1 for v in ssim)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"deepspeed_config.json", "config.json", "export"} <= arts


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path):
    sets = ("train.steps=6", "train.checkpoint_every=3", "train.warmup_steps=2", "loss.adversarial_start_step=2")
    full = _train(tmp_path / "full", *sets)
    first = _train(tmp_path / "split", *sets, extra=("--max-steps", "3"))
    assert first["step"] == 3 and (tmp_path / "split" / "checkpoints" / "LATEST").read_text() == "step000000003"
    second = _train(tmp_path / "split", *sets)
    assert first["losses"] + second["losses"] == full["losses"]
    a = load_file(tmp_path / "full" / "export" / "model.safetensors")
    b = load_file(tmp_path / "split" / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    env = trainer_env()
    cmd = [sys.executable, "-m", "pvq_model.train", "--config", str(DEBUG_CONFIG),
           "--out", str(out), "--set", "train.steps=500", "--set", "train.checkpoint_every=100000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "deepspeed_config.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["stopped"] and 0 < res["step"] < 500
    assert (out / "checkpoints" / "LATEST").read_text() == f"step{res['step']:09d}"
    again = subprocess.run([*cmd, "--max-steps", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["step"] == res["step"] + 2


def test_zero3_leaves_are_blocks_fed_by_grad_inputs():
    """Every ZeRO-3 leaf (each activation-checkpointing block and the quantizer) gets an input that
    requires grad in a training forward: DeepSpeed releases a leaf's gathered weights from its full
    backward hook, which fires before the block's own backward when no input needs a gradient, and
    the backward would then see empty partitions."""
    from pvq_model.blocks import Checkpointed
    from pvq_model.train.setup import mark_zero3_leaves
    from pvq_model.vae import PVQVAE

    cfg = load_config(DEBUG_CONFIG)
    model = PVQVAE(cfg).train()
    blocks = [m for m in model.modules() if isinstance(m, Checkpointed)]
    assert mark_zero3_leaves(model) == len(blocks) + 1 >= 5
    leaves = [m for m in model.modules() if getattr(m, "_z3_leaf", False)]
    assert set(map(id, leaves)) == set(map(id, [*blocks, model.quantizer]))
    seen: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0].requires_grad)) for m in leaves]
    x = torch.rand(1, 3, 16, 64, 64) * 2 - 1  # a clip, no grad (as the trainer's batches)
    model(x)
    for h in hooks:
        h.remove()
    assert len(seen) == len(leaves) and all(seen)
