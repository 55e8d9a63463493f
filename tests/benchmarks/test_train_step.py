"""benchmarks/train_step.py at toy length: both loops step in one process (alternating rounds),
the ratio and the bar are printed, and part 2 (the trainer on freshly sharded demo data) reports a
data-wait fraction."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers import ROOT, trainer_env


@pytest.mark.slow
def test_train_step_benchmark_reports_ratio_and_data_wait():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--steps", "4", "--warm", "1", "--round", "2",
           "--batch", "1"]
    r = subprocess.run(cmd, cwd=ROOT, env=trainer_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    plain = float(re.search(r"plain PyTorch loop :\s+([\d.]+) samples/s", r.stdout).group(1))
    ds = float(re.search(r"DeepSpeed ZeRO-3   :\s+([\d.]+) samples/s \(bf16\)", r.stdout).group(1))
    ratio = float(re.search(r"overhead ratio     : ([\d.]+) .* bar >= 0\.6: (MET|NOT MET)", r.stdout).group(1))
    assert plain > 0 and ds > 0 and ratio == pytest.approx(ds / plain, abs=0.01)
    wait = float(re.search(r"data wait fraction : ([\d.]+) of the step", r.stdout).group(1))
    assert 0 <= wait < 1
