"""benchmarks/gpu_check.py on CPU at toy sizes (``--smoke``): every check's code path runs, the JSON
has the numbers the GPU run reports, and the bounded-memory settings equal tiled_memory.py's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import tiled_memory  # noqa: E402


def test_stream_settings_and_limits():
    assert gpu_check.STREAM == tiled_memory.STREAM
    assert set(gpu_check.CHECK_LIMIT_S) == set(gpu_check.CHECKS)
    assert sum(gpu_check.CHECK_LIMIT_S.values()) <= 480  # the 8 minutes
    assert gpu_check.sizes(False)["zero3_1080p_x16"] == (16, 1080, 1920)
    assert gpu_check.sizes(False)["stream"] == (96, 1080, 1920)


@pytest.mark.slow
def test_smoke_run_reports_every_check(tmp_path):
    from data_prep.samples import make_demo_set
    from pvq_common.env import local_env

    env = local_env()
    demo = make_demo_set(tmp_path / "src")
    proc = subprocess.run([sys.executable, "-c", (
        "import sys; from data_prep.config import load_shard_config; from data_prep.shard import shard; "
        f"shard([{str(demo.csv)!r}, {str(demo.coco_json)!r}], {str(tmp_path / 'shards')!r}, "
        f"load_shard_config({str(ROOT / 'configs/shard/demo.yaml')!r}, ['ray.num_cpus=1', 'ray.object_store_memory=1073741824']))")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke",
                           "--shards", str(tmp_path / "shards"), "--out", str(out)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text())
    assert json.loads(proc.stdout) == report
    assert proc.returncode == 0 and report["ok"], json.dumps(report, indent=1)
    checks = report["checks"]
    assert list(checks) == list(gpu_check.CHECKS)
    assert checks["bf16_grads"]["finite"] and checks["bf16_grads"]["nonfinite"] == []
    assert 0.5 < checks["bf16_grads"]["grad_cosine_bf16_vs_fp32"] <= 1.0
    for name in ("zero3_256x16", "zero3_1080p_x16"):
        z = checks[name]
        assert z["flops_forward"] > 0 and z["step_s_median"] > 0 and z["steps_timed"] >= 3
        assert z["model_tflops_per_step"] == pytest.approx(3 * z["flops_forward"] / 1e12)
        assert z["mfu"] is None and z["peak_source"] == "no GPU"  # no peak on CPU, not a made-up one
    # the larger clip costs more forward FLOPs, in proportion to its padded pixel count or more
    assert checks["zero3_1080p_x16"]["flops_forward"] > 2 * checks["zero3_256x16"]["flops_forward"]
    s = checks["stream_1080p_x96"]
    assert s["shape_t_h_w"] == [32, 96, 160] and s["seconds"] > 0 and s["psnr"] > 0
    assert 0 <= checks["loader"]["data_wait_fraction_median"] <= checks["loader"]["data_wait_fraction_max"] <= 1
