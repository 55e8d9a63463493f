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

from pvq_model.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
SETS = ["train.steps=4", "train.checkpoint_every=1", "train.warmup_steps=1", "data.frames=[16]"]
pytestmark = pytest.mark.slow


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONWARNINGS": "ignore::FutureWarning",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions")),
           "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "pvq_model.train", "--config", str(ROOT / "configs" / "debug.yaml"),
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
    mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions")))
    mp.setattr(os, "fsync", fsync)
    mp.setattr(Path, "replace", replace)
    try:
        args = ["--config", str(ROOT / "configs" / "debug.yaml"), "--out", str(out), "--max-steps", "2"]
        assert entry.main(args + [a for s in SETS for a in ("--set", s)]) == 0
    finally:
        mp.undo()
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
