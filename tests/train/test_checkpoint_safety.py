"""Checkpoints are trusted input and durable (issue 13, items 4 and 13c).

- Resuming refuses a checkpoint folder that is world-writable or owned by another user, because
  DeepSpeed restores engine states with ``torch.load(weights_only=False)``; after ``chmod o-w`` the
  same run resumes.
- Every checkpoint file is fsynced before ``LATEST`` is renamed into place (the real trainer, in
  this process, with ``os.fsync`` recorded on its way to the real call).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from pvq_model.train import checkpoint as ckpt
from helpers import DEBUG_CONFIG, ROOT, trainer_env

SETS = ["train.steps=4", "train.checkpoint_every=1", "train.warmup_steps=1", "data.frames=[16]"]
pytestmark = pytest.mark.slow


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = trainer_env(OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "pvq_model.train", "--config", str(DEBUG_CONFIG),
           "--out", str(out), *(a for s in SETS for a in ("--set", s)), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real run stopped after 2 of 4 steps, checkpointed at every step; written in this process
    with every fsync recorded (path, and whether LATEST existed yet)."""
    import pvq_model.train.__main__ as entry

    out = tmp_path_factory.mktemp("ckpt") / "run"
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(self, target):
        events.append(("replace", f"{self} -> {target}"))
        return real_replace(self, target)

    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setattr(os, "fsync", fsync)
    mp.setattr(Path, "replace", replace)
    saved_env = dict(os.environ)
    try:
        args = ["--config", str(DEBUG_CONFIG), "--out", str(out), "--max-steps", "2"]
        assert entry.main(args + [a for s in SETS for a in ("--set", s)]) == 0
        # the in-process trainer's world-of-one RANK / MASTER_PORT lasted for its train() call only:
        # an inherited RANK would send every later subprocess trainer to one env:// port (EADDRINUSE)
        rank_keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")
        assert {k: os.environ.get(k) for k in rank_keys} == {k: saved_env.get(k) for k in rank_keys}
    finally:
        mp.undo()
        os.environ.clear()  # and whatever a library may have added
        os.environ.update(saved_env)
        if dist.is_initialized():
            dist.destroy_process_group()
    return out, events


def test_checkpoint_files_are_fsynced_before_latest_is_renamed(run_dir):
    out, events = run_dir
    root = out / "checkpoints"
    tag = ckpt.tag_for(2)
    files = [f for d in (root / "g" / tag, root / "d" / tag, root / "rng" / tag) for f in d.rglob("*") if f.is_file()]
    files.append(root / "ema" / f"{tag}.safetensors")
    assert len(files) >= 5
    renames = [i for i, e in enumerate(events) if e[0] == "replace" and e[1].endswith(" -> " + str(root / "LATEST"))]
    assert renames, events[-20:]
    rename = renames[-1]  # the one that made the final tag current
    synced_before = {e[1] for e in events[:rename] if e[0] == "fsync"}
    missing = [str(f) for f in files if str(f.resolve()) not in synced_before]
    assert not missing, f"not fsynced before LATEST was renamed: {missing}"
    assert str((root / "LATEST.tmp").resolve()) in synced_before
    assert (root / "LATEST").read_text() == tag


def test_world_writable_or_foreign_checkpoint_is_refused_then_resumes_when_fixed(run_dir):
    out, _ = run_dir
    root = out / "checkpoints"
    victim = next((root / "g" / ckpt.tag_for(2)).rglob("*.pt"))
    mode = victim.stat().st_mode
    victim.chmod(mode | 0o002)
    r = _train(out)
    assert r.returncode != 0
    assert "world-writable" in r.stderr and str(victim) in r.stderr and "torch.load(weights_only=False)" in r.stderr
    victim.chmod(mode)
    if os.getuid() == 0:  # only root can give a file away
        os.chown(victim, 12345, -1)
        r = _train(out)
        assert r.returncode != 0 and "owned by uid 12345" in r.stderr, r.stderr[-2000:]
        os.chown(victim, 0, -1)
    r = _train(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["step"] == 4


def test_check_trusted_accepts_own_private_folder(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "x.pt").write_bytes(b"x")
    ckpt.check_trusted(tmp_path)  # no error
    (tmp_path / "g").chmod(0o777)
    with pytest.raises(ckpt.UntrustedCheckpointError, match="world-writable"):
        ckpt.check_trusted(tmp_path)


def test_killed_run_resumes_its_mlflow_run_and_old_checkpoints_are_pruned(tmp_path):
    """kill -9 mid-run leaves the MLflow run RUNNING; the resume continues that run (one run per
    run directory) and ends it FINISHED. With keep_checkpoints=2 and step 1 pinned, only the two
    newest checkpoints and the pinned one remain."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    env = trainer_env(OMP_NUM_THREADS="1")
    sets = ["train.steps=12", "train.checkpoint_every=1", "train.warmup_steps=1", "data.frames=[16]",
            "train.keep_checkpoints=2", "train.pin_checkpoints=[1]"]
    cmd = [sys.executable, "-m", "pvq_model.train", "--config", str(DEBUG_CONFIG),
           "--out", str(out), *(a for s in sets for a in ("--set", s))]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while not (out / "checkpoints" / "LATEST").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert (out / "checkpoints" / "LATEST").exists()
    killed_at = int((out / "checkpoints" / "LATEST").read_text().removeprefix("step"))
    assert killed_at < 12, "the run finished before it could be killed"
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pvq-vae")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "RUNNING"  # what a kill -9 leaves behind

    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = client.search_runs([exp.experiment_id])
    assert [x.info.run_id for x in runs] == [run.info.run_id]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["resumed_from"] == ckpt.tag_for(killed_at)
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "loss")}
    assert steps == set(range(12))
    assert ckpt.tags(out / "checkpoints") == [ckpt.tag_for(1), ckpt.tag_for(11), ckpt.tag_for(12)]
    assert not (out / "checkpoints" / "ema" / f"{ckpt.tag_for(10)}.safetensors").exists()
