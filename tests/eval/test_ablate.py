"""pvq_model.eval.ablate: ablation files become overrides of the base config (their own keys only) with a
one-process geometry that keeps the global batch, the Table-1 markdown (mean ± std over seeds,
baseline rows) and the paper's orderings on known numbers, and the harness end to end on 2 variants
x 2 seeds x 2 steps."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import yaml

from pvq_model.eval import ablate as ab
from pvq_model.eval import tables
from pvq_model.config import load_config
from helpers import DEBUG_CONFIG, ROOT

ABLATIONS = ROOT / "configs" / "ablations"
DEBUG = load_config(DEBUG_CONFIG)
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
        cfg = load_config(DEBUG_CONFIG, overrides)
        assert (tables.method_label(cfg), cfg.quantizer.codebook_size, cfg.quantizer.dim) == expected[name]
        # debug widths, not the paper's: only the file's own keys differ from configs/debug.yaml
        assert cfg.model.encoder.channels == DEBUG.model.encoder.channels == [8, 16, 16, 32, 32]
        assert cfg.model.decoder.channels == DEBUG.model.decoder.channels
        assert cfg.train.seed == DEBUG.train.seed
        own = yaml.safe_load(f.read_text())
        assert cfg.model.latent_dim == own.get("model", {}).get("latent_dim", DEBUG.model.latent_dim)
    assert ab.expand_configs([str(ABLATIONS / "*fft*.yaml")]) == [ABLATIONS / "no_fft.yaml",
                                                                   ABLATIONS / "no_fft_dwt.yaml"]


def _part(psnr, ssim, clips=1, lpips=None):
    return {"clips": clips, "frames": clips, "psnr": psnr, "ssim": ssim, "lpips": lpips}


BASELINES = {"mean_colour": {"overall": _part(12.0, 0.3, 2), "images": _part(11.0, 0.25), "videos": _part(13.0, 0.35),
                             "margin_db": 16.5, "block": None},
             "pooled": {"overall": _part(20.0, 0.6, 2), "images": _part(19.5, 0.55), "videos": _part(20.5, 0.65),
                        "margin_db": 8.5, "block": [16, 32, 32]}}


def test_table_markdown_on_known_numbers():
    def run(variant, method, seed, img, vid, overall, **kw):
        return ab.VariantResult(variant, method, 65536 if method.startswith("PVQ") else 4096, 16, 4, True, True,
                                seed=seed, images=img, videos=vid, overall=overall, **kw)

    rows = [run("pvq", "PVQ", 42, _part(27.0, 0.80), _part(30.0, 0.90, lpips=0.1), _part(28.0, 0.85, 2),
                baselines=BASELINES),
            run("pvq", "PVQ", 43, _part(28.0, 0.82), _part(31.0, 0.90, lpips=0.2), _part(29.0, 0.86, 2),
                baselines=BASELINES),
            run("pvq", "PVQ", 44, {}, {}, {}, error="RuntimeError: oom"),
            run("vq", "VQ", 42, _part(25.123, 0.81234), {"clips": 0}, _part(25.123, 0.81234)),
            run("gvq", "GVQ", 42, {}, {}, {}, error="RuntimeError: boom")]
    md = ab.table_markdown(rows).splitlines()
    assert md[0] == ("| Method | Codebook size | Dim | Seeds | Img PSNR | Img SSIM | Img LPIPS | Vid PSNR | Vid SSIM "
                     "| Vid LPIPS | PSNR (all) |")
    assert md[1] == "|---|" + "---:|" * 10
    # mean ± sample std (ddof=1) over the 2 finished seeds: std(27, 28) = 0.7071, std(0.80, 0.82) = 0.01414
    assert md[2] == ("| PVQ | 65536 | 16 | 2 of 3 | 27.50 ± 0.71 | 0.8100 ± 0.0141 | absent | 30.50 ± 0.71 "
                     "| 0.9000 ± 0.0000 | 0.1500 ± 0.0707 | 28.50 ± 0.71 |")
    assert md[3] == "| VQ | 4096 | 16 | 1 | 25.12 | 0.8123 | absent | n/a | n/a | n/a | 25.12 |"  # 1 seed: the value
    assert md[4].startswith("| GVQ | 4096 | 16 | failed: RuntimeError: boom |")
    # one pair of baseline rows for the set (the variants share the validation clips)
    assert md[5] == ("| mean colour (same clips) | - | - | - | 11.00 | 0.2500 | absent | 13.00 | 0.3500 | absent "
                     "| 12.00 |")
    assert md[6] == ("| pooled 16x32x32 (same clips) | - | - | - | 19.50 | 0.5500 | absent | 20.50 | 0.6500 "
                     "| absent | 20.00 |")
    assert md[8:] == ["- PVQ, seed 44: failed: RuntimeError: oom", "- GVQ, seed 42: failed: RuntimeError: boom"]
    stats = ab.variant_stats(rows[:3])
    assert stats["seeds"] == [42, 43] and stats["failed"] == {"44": "RuntimeError: oom"}
    assert stats["images"]["psnr"] == {"mean": 27.5, "std": pytest.approx(2 ** -0.5), "values": [27.0, 28.0]}
    assert "lpips" not in stats["images"] and stats["videos"]["lpips"]["mean"] == pytest.approx(0.15)


def test_paper_orderings_cite_table_1():
    # Table 1 of the supplementary material: (COCO-Val PSNR, WebVid-Val PSNR)
    table1 = {"vq": (31.45, 32.91), "gvq": (32.25, 33.34), "lfq": (34.22, 33.92), "rvq": (33.92, 34.22),
              "psvq": (34.45, 34.98), "rvq_lfq": (34.78, 35.27), "pvq": (35.12, 36.01)}
    for part, col in (("images", 0), ("videos", 1)):
        pairs = [(o.better, o.worse) for o in ab.PAPER_ORDERINGS if o.part == part]
        ranked = sorted(table1, key=lambda v: -table1[v][col])
        assert pairs == list(zip(ranked, ranked[1:]))  # adjacent rows of the table sorted by PSNR
        for o in ab.PAPER_ORDERINGS:
            if o.part == part:
                assert (o.paper_better, o.paper_worse) == (table1[o.better][col], table1[o.worse][col])
    assert [(o.better, o.worse) for o in ab.PAPER_ORDERINGS if o.part == "overall"] == [
        ("pvq", "no_fft"), ("pvq", "no_dwt"), ("no_fft", "no_fft_dwt"), ("no_dwt", "no_fft_dwt")]
    variants = {f.stem for f in ABLATIONS.glob("*.yaml")}
    assert all({o.better, o.worse} <= variants for o in ab.PAPER_ORDERINGS)


def test_orderings_verdicts_on_known_numbers():
    assert ab.verdict(1.0, 1.0) == ab.verdict(-1.0, 1.0) == ab.verdict(0.0, 0.0) == "not resolved"
    assert ab.verdict(1e-9, 0.0) == "holds" and ab.verdict(-1.5, 1.0) == "reversed"
    assert ab.verdict(5.0, None) == "one seed"
    psnr = {"pvq": {"overall": [30.0, 31.0, 32.0], "images": [35.0]},  # std 1.0
            "no_fft": {"overall": [28.0, 28.5, 29.0]},  # std 0.5
            "no_dwt": {"overall": [30.5, 31.5, 32.5]},  # std 1.0
            "no_fft_dwt": {"overall": [33.0, 34.0, 35.0]},
            "rvq_lfq": {"images": [34.0]}, "vq": {"images": [20.0, 21.0]}}
    got = {(c["better"], c["worse"], c["part"]): c for c in ab.compare_orderings(psnr)}
    assert set(got) == {("pvq", "no_fft", "overall"), ("pvq", "no_dwt", "overall"),
                        ("no_fft", "no_fft_dwt", "overall"), ("no_dwt", "no_fft_dwt", "overall"),
                        ("pvq", "rvq_lfq", "images")}  # pairs with a missing side are left out (vq: no gvq)
    c = got["pvq", "no_fft", "overall"]
    assert (c["mean_better"], c["mean_worse"], c["difference"], c["spread"], c["seeds"], c["verdict"]) == (
        31.0, 28.5, 2.5, 1.0, [3, 3], "holds")  # spread: the larger std (1.0), not the pooled 0.79
    assert (got["pvq", "no_dwt", "overall"]["difference"], got["pvq", "no_dwt", "overall"]["verdict"]) == (
        -0.5, "not resolved")
    assert got["no_fft", "no_fft_dwt", "overall"]["verdict"] == "reversed"
    assert got["no_dwt", "no_fft_dwt", "overall"]["difference"] == -2.5
    one = got["pvq", "rvq_lfq", "images"]
    assert (one["spread"], one["verdict"], one["paper_better"], one["paper_worse"]) == (None, "one seed", 35.12, 34.78)
    # a side with one finished seed contributes no std: the other side's is the spread
    mixed = ab.compare_orderings({"pvq": {"overall": [30.0, 31.0, 32.0]}, "no_fft": {"overall": [31.5]}})
    assert (mixed[0]["spread"], mixed[0]["verdict"]) == (1.0, "not resolved")

    md = ab.orderings_markdown(list(got.values()), {"pvq": "PVQ", "no_fft": "PVQ w/o FFT", "no_dwt": "PVQ w/o DWT",
                                                    "no_fft_dwt": "PVQ w/o FFT, DWT", "rvq_lfq": "RVQ + LFQ"})
    lines = md.splitlines()
    assert "| PVQ > PVQ w/o FFT | PSNR (all) | curves only | +2.50 | 1.00 | holds |" in lines
    assert "| PVQ > RVQ + LFQ | Img PSNR | 35.12 > 34.78 | +1.00 | n/a | one seed |" in lines
    assert lines[-1] == "holds: 1, reversed: 2, not resolved: 1, one seed: 1 of 5 pairs."
    assert ab.orderings_markdown([], {}).startswith("No pair the paper orders")


def test_single_process_geometry_keeps_the_global_batch():
    common = ab.common_overrides("/d", 5, ["128x128"], seed=7)
    _, overrides, cfg = ab.resolve_variant(ABLATIONS / "no_dwt.yaml", common, ROOT / "configs" / "cpu.yaml")
    t = cfg.train
    # configs/cpu.yaml: 2 ranks x micro-batch 2 = 4 -> 1 rank x micro-batch 2 x 2 accumulated = 4
    assert (t.nodes, t.gpus_per_node, t.world_size, t.micro_batch, t.grad_accum, t.global_batch) == (1, 1, 1, 2, 2, 4)
    assert t.seed == 7 and t.steps == 5 and cfg.data.scales == [[128, 128]] and cfg.model.encoder.dwt is False
    assert overrides[-4:] == ["train.nodes=1", "train.gpus_per_node=1", "train.world_size=1", "train.grad_accum=2"]
    _, _, dbg = ab.resolve_variant(ABLATIONS / "pvq.yaml", common)  # debug: 2 x 1 -> 1 x 1 x 2
    assert (dbg.train.world_size, dbg.train.micro_batch, dbg.train.grad_accum, dbg.train.global_batch) == (1, 1, 2, 2)
    one = load_config(DEBUG_CONFIG, ["train.nodes=1", "train.gpus_per_node=1",
                                                        "train.world_size=1", "train.global_batch=1"])
    assert ab.single_process_overrides(one) == []
    accum = load_config(ROOT / "configs" / "cpu.yaml", ["train.grad_accum=3", "train.global_batch=12"])
    assert ab.single_process_overrides(accum)[-1] == "train.grad_accum=6"  # 2 ranks x 3 accumulated
    assert ab.seed_list(3) == [42, 43, 44] and ab.seed_list(2, 7) == [7, 8] and ab.seed_list([5, 1]) == [5, 1]
    with pytest.raises(ab.AblationError, match="seeds"):
        ab.seed_list(0)
    with pytest.raises(ab.AblationError, match="distinct"):
        ab.seed_list([1, 1])


def test_ablate_rejects_bad_inputs(tmp_path):
    with pytest.raises(ab.AblationError, match="not a shard dataset"):
        ab.ablate([ABLATIONS / "pvq.yaml"], tmp_path, 2, tmp_path / "out")
    with pytest.raises(ab.AblationError, match="steps"):
        ab.ablate([ABLATIONS / "pvq.yaml"], tmp_path, 0, tmp_path / "out")
    with pytest.raises(ab.AblationError, match="--jobs"):
        ab.ablate([ABLATIONS / "pvq.yaml"], tmp_path, 2, tmp_path / "out", jobs=0)


def _cell(values, digits):
    """mean ± sample std, computed here independently of pvq_model.eval.tables."""
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


@pytest.mark.slow
def test_ablate_two_variants_two_seeds(shards, tmp_path):
    out = tmp_path / "abl"
    configs = [ABLATIONS / "no_fft.yaml", ABLATIONS / "pvq.yaml"]
    md = ab.ablate(configs, shards, 2, out, seeds=2, log=lambda *_: None, jobs=2)  # two trainings at once

    res = json.loads((out / "ablation.json").read_text())
    assert res["steps"] == 2 and res["seeds"] == [42, 43] and res["base"] == "configs/debug.yaml"
    assert [v["variant"] for v in res["variants"]] == ["pvq", "no_fft"]  # Table-1 order
    assert [(r["variant"], r["seed"]) for r in res["runs"]] == [("pvq", 42), ("no_fft", 42), ("pvq", 43),
                                                               ("no_fft", 43)]  # seed by seed, as submitted
    assert (out / "ablation.md").read_text().startswith(md)
    lines = md.splitlines()
    summaries = {}
    for r in res["runs"]:
        assert r["error"] is None
        assert Path(r["run_dir"]) == out / "runs" / r["variant"] / f"seed{r['seed']}"
        run = json.loads((Path(r["run_dir"]) / "result.json").read_text())
        assert run["step"] == r["steps"] == 2 and len(run["losses"]) == 2
        # the seed, data and budget of the run; only the variant's own keys differ; one process
        # with the debug config's global batch (2 ranks x 1 -> 1 rank x 2 accumulated)
        cfg = yaml.safe_load((Path(run["export"]) / "config.yaml").read_text())
        t = cfg["train"]
        assert t["seed"] == r["seed"] and t["steps"] == 2
        assert (t["world_size"], t["micro_batch"], t["grad_accum"], t["global_batch"]) == (1, 1, 2, 2)
        assert cfg["model"]["encoder"]["fft"] is (r["variant"] == "pvq") and cfg["model"]["encoder"]["dwt"] is True
        assert cfg["model"]["encoder"]["channels"] == [8, 16, 16, 32, 32]
        summary = json.loads((Path(r["eval_dir"]) / "summary.json").read_text())
        assert r["images"] == summary["images"] and r["videos"] == summary["videos"]
        summaries.setdefault(r["variant"], []).append(summary)
    # two seeds of a seeded model differ, so every metric cell is a mean ± std of the two evaluations
    for v in res["variants"]:
        ss = summaries[v["variant"]]
        assert v["seeds"] == [42, 43] and v["failed"] == {}
        assert v["overall"]["psnr"]["values"] == [s["overall"]["psnr"] for s in ss]
        cells = [_cell([s[p][m] for s in ss], d) for p, m, d in (("images", "psnr", 2), ("images", "ssim", 4))]
        cells += ["absent"] + [_cell([s["videos"][m] for s in ss], d) for m, d in (("psnr", 2), ("ssim", 4))]
        row = (f"| {v['method']} | 65536 | 16 | 2 | " + " | ".join(cells) + " | absent | "
               + _cell([s["overall"]["psnr"] for s in ss], 2) + " |")
        assert row in lines
    # the baselines: one pair of rows for the set, the numbers of every evaluation (same clips)
    def measured(s):  # the baselines' numbers; the margin over them is each run's own
        return {k: {p: v for p, v in e.items() if p != "margin_db"} for k, e in s["baselines"].items()}

    b = summaries["pvq"][0]["baselines"]
    assert all(measured(s) == measured(summaries["pvq"][0]) for ss in summaries.values() for s in ss)
    assert list(res["baselines"].values()) == list(measured(summaries["pvq"][0]).values())
    block = "x".join(map(str, b["pooled"]["block"]))
    assert sum(line.startswith("| mean colour (same clips) |") for line in lines) == 1
    assert (f"| pooled {block} (same clips) | - | - | - | {b['pooled']['images']['psnr']:.2f} | "
            f"{b['pooled']['images']['ssim']:.4f} | absent |") in md
    # the one pair the paper orders that is in this run, with its verdict from the seeds' spread
    [c] = res["orderings"]
    pvq, no_fft = ([s["overall"]["psnr"] for s in summaries[k]] for k in ("pvq", "no_fft"))
    assert (c["better"], c["worse"], c["part"], c["seeds"]) == ("pvq", "no_fft", "overall", [2, 2])
    assert c["difference"] == pytest.approx(statistics.mean(pvq) - statistics.mean(no_fft))
    assert c["spread"] == pytest.approx(max(statistics.stdev(pvq), statistics.stdev(no_fft)))
    assert c["verdict"] == ab.verdict(c["difference"], c["spread"])
    assert f"| PVQ > PVQ w/o FFT | PSNR (all) | curves only | {c['difference']:+.2f} | {c['spread']:.2f} | " \
           f"{c['verdict']} |" in lines
    assert res["buckets"] and all(int(b.split("x")[0]) * int(b.split("x")[1]) <= 128 * 128 for b in res["buckets"])
    for png in ("curves_fft_dwt.png", "curves_all.png", "report/training.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    page = (out / "report" / "index.html").read_text()
    assert "PVQ w/o FFT" in page and "mean colour (same clips)" in page

    # a second call reuses the finished runs (no training) and reproduces the numbers exactly
    t0 = time.perf_counter()
    again = ab.ablate(configs, shards, 2, out, seeds=[42, 43], report=False, log=lambda *_: None)
    assert again.splitlines()[2:] == lines[2:]
    assert all(r["train_s"] < 1.0 for r in json.loads((out / "ablation.json").read_text())["runs"])
    assert time.perf_counter() - t0 < 120


def test_a_run_dir_trained_with_other_settings_is_not_reused(tmp_path):
    run = tmp_path / "runs" / "pvq" / "seed42"
    run.mkdir(parents=True)
    (run / "export").mkdir()
    (run / "result.json").write_text(json.dumps({"step": 3, "losses": [1.0], "export": str(run / "export")}))
    (run / "harness.json").write_text(json.dumps({"base": str(ab.DEBUG_CONFIG.resolve()), "overrides": ["a=1"]}))
    assert ab.train_variant(["a=1"], run, 3)["step"] == 3  # same settings, finished: reused, nothing trains
    with pytest.raises(RuntimeError, match="trained with other settings"):
        ab.train_variant(["a=1"], run, 3, base=ROOT / "configs" / "cpu.yaml")
    with pytest.raises(RuntimeError, match="use another --out"):
        ab.train_variant(["a=2"], run, 3)


def test_typer_command_parses_globs_and_reports_bad_data(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    runner = CliRunner()
    # what an unquoted shell glob expands to: the first file after --configs, the rest positional
    res = runner.invoke(app, ["ablate", "--configs", str(ABLATIONS / "pvq.yaml"), str(ABLATIONS / "vq.yaml"),
                              "--data", str(tmp_path), "--steps", "2", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a shard dataset" in res.output
    res = runner.invoke(app, ["ablate", "--configs", str(ABLATIONS / "*.yaml"), "--data", str(tmp_path),
                              "--seeds", "3", "--base", str(ROOT / "configs" / "cpu.yaml")])
    assert res.exit_code == 2 and "not a shard dataset" in res.output
    res = runner.invoke(app, ["ablate", "--configs", str(ABLATIONS / "pvq.yaml"), "--data", str(tmp_path),
                              "--base", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "base config not found" in res.output


def test_write_outputs_records_a_failed_variant(tmp_path):
    failed = ab.VariantResult("gvq", "GVQ", 4096, 256, 1, True, True, run_dir=str(tmp_path / "runs" / "gvq"),
                              error="RuntimeError: training failed (exit 1)")
    table = ab.write_outputs([failed], tmp_path, steps=5, seed=42, data="/d", split="val", buckets=["96x64"],
                             wall_s=1.5)
    assert "| GVQ | 4096 | 256 | failed: RuntimeError: training failed (exit 1) |" in table
    res = json.loads((tmp_path / "ablation.json").read_text())
    assert res["runs"][0]["error"].startswith("RuntimeError") and res["curves"] == {}
    assert res["variants"][0]["seeds"] == [] and res["variants"][0]["failed"] == {"42": failed.error}
    assert res["orderings"] == [] and "No pair the paper orders" in table
    assert not (tmp_path / "curves_all.png").exists() and not (tmp_path / "report").exists()
    assert "base configs/debug.yaml, 5 steps per run, one process, seeds 42, buckets 96x64" in (
        tmp_path / "ablation.md").read_text()
