"""pvq_model.ablate: ablation files become overrides of the debug config (their own keys only), the
Table-1 markdown on known numbers, and the harness end to end on 2 variants x 3 steps."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from pvq_model import ablate as ab
from pvq_model.config import load_config

ROOT = Path(__file__).resolve().parent.parent
ABLATIONS = ROOT / "configs" / "ablations"
DEBUG = load_config(ROOT / "configs" / "debug.yaml")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_variant_overrides_are_the_files_own_keys():
    name, overrides = ab.variant_overrides(ABLATIONS / "rvq.yaml")
    assert name == "rvq"
    assert overrides == ["name=\"ablation-rvq\"", "model.latent_dim=512", "quantizer.type=\"rvq\"",
                         "quantizer.codebook_size=8000", "quantizer.dim=512", "quantizer.num_levels=4"]
    assert ab.variant_overrides(ABLATIONS / "no_fft_dwt.yaml")[1] == [
        "name=\"ablation-no-fft-dwt\"", "model.encoder.fft=false", "model.encoder.dwt=false"]
    with pytest.raises(ab.AblationError, match="not found"):
        ab.variant_overrides(ABLATIONS / "missing.yaml")


def test_every_ablation_applies_on_the_debug_width():
    expected = {"vq": ("VQ", 4096, 256), "gvq": ("GVQ", 4096, 256), "lfq": ("LFQ", 65536, 16),
                "rvq": ("RVQ", 8000, 512), "psvq": ("PSVQ", 8000, 512), "rvq_lfq": ("RVQ + LFQ", 65536, 16),
                "pvq": ("PVQ", 65536, 16), "no_fft": ("PVQ w/o FFT", 65536, 16),
                "no_dwt": ("PVQ w/o DWT", 65536, 16), "no_fft_dwt": ("PVQ w/o FFT, DWT", 65536, 16)}
    files = sorted(ABLATIONS.glob("*.yaml"))
    assert {f.stem for f in files} == set(expected)
    for f in files:
        name, overrides = ab.variant_overrides(f)
        cfg = load_config(ROOT / "configs" / "debug.yaml", overrides)
        assert (ab.method_label(cfg), cfg.quantizer.codebook_size, cfg.quantizer.dim) == expected[name]
        # debug widths, not the paper's: only the file's own keys differ from configs/debug.yaml
        assert cfg.model.encoder.channels == DEBUG.model.encoder.channels == [8, 16, 16, 32, 32]
        assert cfg.model.decoder.channels == DEBUG.model.decoder.channels
        assert cfg.train.seed == DEBUG.train.seed
        own = yaml.safe_load(f.read_text())
        assert cfg.model.latent_dim == own.get("model", {}).get("latent_dim", DEBUG.model.latent_dim)
    assert ab.expand_configs([str(ABLATIONS / "*fft*.yaml")]) == [ABLATIONS / "no_fft.yaml",
                                                                   ABLATIONS / "no_fft_dwt.yaml"]


def test_table_markdown_on_known_numbers():
    part = {"clips": 2, "frames": 2, "psnr": 27.123, "ssim": 0.81234, "lpips": None}
    rows = [ab.VariantResult("pvq", "PVQ", 65536, 16, 4, True, True, images=part,
                             videos={"clips": 1, "frames": 16, "psnr": 30.0, "ssim": 0.9, "lpips": 0.12345}),
            ab.VariantResult("vq", "VQ", 4096, 256, 1, True, True, images=part, videos={"clips": 0}),
            ab.VariantResult("gvq", "GVQ", 4096, 256, 1, True, True, error="RuntimeError: boom")]
    md = ab.table_markdown(rows).splitlines()
    assert md[0] == "| Method | Codebook size | Dim | Img PSNR | Img SSIM | Img LPIPS | Vid PSNR | Vid SSIM | Vid LPIPS |"
    assert md[2] == "| PVQ | 65536 | 16 | 27.12 | 0.8123 | absent | 30.00 | 0.9000 | 0.1235 |"
    assert md[3] == "| VQ | 4096 | 256 | 27.12 | 0.8123 | absent | n/a | n/a | n/a |"
    assert md[4].startswith("| GVQ | 4096 | 256 | failed: RuntimeError: boom")


def test_ablate_rejects_bad_inputs(tmp_path):
    with pytest.raises(ab.AblationError, match="not a shard dataset"):
        ab.ablate([ABLATIONS / "pvq.yaml"], tmp_path, 2, tmp_path / "out")
    with pytest.raises(ab.AblationError, match="steps"):
        ab.ablate([ABLATIONS / "pvq.yaml"], tmp_path, 0, tmp_path / "out")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """The embedded demo set sharded once (train + val splits)."""
    for k, v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true",
                 "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}.items():
        os.environ.setdefault(k, v)
    from data_prep.config import load_shard_config
    from data_prep.samples import make_demo_set
    from data_prep.shard import shard

    root = tmp_path_factory.mktemp("ablate-data")
    demo = make_demo_set(root / "sources")
    shard([str(demo.csv), str(demo.coco_json)], str(root / "shards"),
          load_shard_config(ROOT / "configs" / "shard" / "demo.yaml",
                            ["ray.num_cpus=1", "ray.object_store_memory=1073741824"]))
    import ray

    if ray.is_initialized():
        ray.shutdown()
    return str(root / "shards")


@pytest.mark.slow
def test_ablate_two_variants(shards, tmp_path):
    out = tmp_path / "abl"
    configs = [ABLATIONS / "pvq.yaml", ABLATIONS / "no_fft.yaml"]
    table = ab.ablate(configs, shards, 3, out, log=lambda *_: None)

    res = json.loads((out / "ablation.json").read_text())
    assert res["steps"] == 3 and res["seed"] == 42
    assert [v["variant"] for v in res["variants"]] == ["pvq", "no_fft"]  # Table-1 order
    assert (out / "ablation.md").read_text().startswith(table)
    for v in res["variants"]:
        assert v["error"] is None
        run = json.loads((Path(v["run_dir"]) / "result.json").read_text())
        assert run["step"] == v["steps"] == 3 and len(run["losses"]) == 3
        # same seed, data and budget; only the variant's own keys differ
        cfg = yaml.safe_load((Path(run["export"]) / "config.yaml").read_text())
        assert cfg["train"]["seed"] == 42 and cfg["train"]["steps"] == 3
        assert cfg["model"]["encoder"]["fft"] is (v["variant"] == "pvq") and cfg["model"]["encoder"]["dwt"] is True
        assert cfg["model"]["encoder"]["channels"] == [8, 16, 16, 32, 32]
        summary = json.loads((Path(v["eval_dir"]) / "summary.json").read_text())
        assert v["images"] == summary["images"] and v["videos"] == summary["videos"]
        row = (f"| {v['method']} | 65536 | 16 | {summary['images']['psnr']:.2f} | {summary['images']['ssim']:.4f} "
               f"| absent | {summary['videos']['psnr']:.2f} | {summary['videos']['ssim']:.4f} | absent |")
        assert row in table.splitlines()
    assert res["buckets"] and all(int(b.split("x")[0]) * int(b.split("x")[1]) <= 128 * 128 for b in res["buckets"])
    for png in ("curves_fft_dwt.png", "curves_all.png", "report/training.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert "PVQ w/o FFT" in (out / "report" / "index.html").read_text()

    # a second call reuses the finished runs (no training) and reproduces the numbers exactly
    t0 = time.perf_counter()
    again = ab.ablate(configs, shards, 3, out, report=False, log=lambda *_: None)
    assert again.splitlines()[2:] == table.splitlines()[2:]
    assert all(v["train_s"] < 1.0 for v in json.loads((out / "ablation.json").read_text())["variants"])
    assert time.perf_counter() - t0 < 120


def test_typer_command_parses_globs_and_reports_bad_data(tmp_path):
    import typer
    from typer.testing import CliRunner

    app = typer.Typer()
    app.command("ablate")(ab.typer_command())
    app.command("noop")(lambda: None)  # two commands: `ablate` is a subcommand, as under `pvq`
    runner = CliRunner()
    # what an unquoted shell glob expands to: the first file after --configs, the rest positional
    res = runner.invoke(app, ["ablate", "--configs", str(ABLATIONS / "pvq.yaml"), str(ABLATIONS / "vq.yaml"),
                              "--data", str(tmp_path), "--steps", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a shard dataset" in res.output
    res = runner.invoke(app, ["ablate", "--configs", str(ABLATIONS / "*.yaml"), "--data", str(tmp_path)])
    assert res.exit_code == 2 and "not a shard dataset" in res.output


def test_write_outputs_records_a_failed_variant(tmp_path):
    failed = ab.VariantResult("gvq", "GVQ", 4096, 256, 1, True, True, run_dir=str(tmp_path / "runs" / "gvq"),
                              error="RuntimeError: training failed (exit 1)")
    table = ab.write_outputs([failed], tmp_path, steps=5, seed=42, data="/d", split="val", buckets=["96x64"],
                             wall_s=1.5)
    assert "| GVQ | 4096 | 256 | failed: RuntimeError: training failed (exit 1) |" in table
    res = json.loads((tmp_path / "ablation.json").read_text())
    assert res["variants"][0]["error"].startswith("RuntimeError") and res["curves"] == {}
    assert not (tmp_path / "curves_all.png").exists() and not (tmp_path / "report").exists()
    assert "5 steps per variant, seed 42, buckets 96x64" in (tmp_path / "ablation.md").read_text()
