"""pvq_model.eval.evaluate / .summary: aggregation on known inputs, codebook statistics, determinism, results files,
shard and folder inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pvq_model.eval import evaluate as ev
from pvq_model.eval import summary as sm


def _row(kind, bucket, frames, psnr, ssim, lpips=None):
    return {"key": f"{kind}-{bucket}-{psnr}", "kind": kind, "bucket": bucket, "frames": frames, "length": frames,
            "psnr": psnr, "ssim": ssim, "lpips": lpips, "psnr_frames": [psnr] * frames, "encode_s": 0.0, "decode_s": 0.0}


def test_aggregate_images_and_videos_separately_lpips_absent_not_zero():
    rows = [_row("image", "96x64", 1, 20.0, 0.5), _row("image", "96x64", 1, 30.0, 0.7),
            _row("video", "320x180", 32, 25.0, 0.6), _row("video", "96x64", 16, 35.0, 0.8)]
    assert sm.aggregate([r for r in rows if r["kind"] == "image"]) == {
        "clips": 2, "frames": 2, "psnr": 25.0, "ssim": pytest.approx(0.6), "lpips": None}
    assert sm.aggregate(rows)["psnr"] == 27.5
    assert sm.aggregate(rows)["frames"] == 50
    by_bucket = sm.group(rows, "bucket")
    assert list(by_bucket) == ["96x64", "320x180"]
    assert by_bucket["96x64"]["psnr"] == pytest.approx(85.0 / 3)
    assert sm.group(rows, "frames")["32"]["clips"] == 1
    flat = sm.flat_metrics({"overall": sm.aggregate(rows), "images": sm.aggregate(rows[:2]),
                            "videos": sm.aggregate(rows[2:]), "by_bucket": by_bucket, "by_frames": {}, "codebook": {}})
    assert flat["eval/videos/psnr"] == 30.0 and flat["eval/images/clips"] == 2.0
    assert not any("lpips" in k for k in flat)  # absent, never logged as 0
    with_lpips = sm.aggregate([_row("video", "a", 16, 1.0, 0.1, 0.2), _row("video", "a", 16, 1.0, 0.1, 0.4)])
    assert with_lpips["lpips"] == pytest.approx(0.3)


def test_codebook_usage_and_perplexity_per_level():
    c = sm.CodebookCounter(4)
    c.add([torch.tensor([[0, 0], [1, 1]]), torch.tensor([0, 1, 2, 3])])
    c.add([torch.tensor([0, 1]), torch.tensor([0, 1, 2, 3])])
    s = c.summary()
    assert s["level0"] == {"tokens": 6, "codes_used": 2, "codebook_size": 4, "usage": 0.5,
                           "perplexity": pytest.approx(2.0)}
    assert s["level1"]["usage"] == 1.0 and s["level1"]["perplexity"] == pytest.approx(4.0)
    single = sm.CodebookCounter(8)
    single.add(torch.tensor([7, 7, 7]))
    assert single.summary()["level0"]["perplexity"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def media_folder(tmp_path_factory):
    from pvq_model.eval.video_io import write_video

    d = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    frames = np.concatenate([np.roll(base, i, axis=2) for i in range(16)])  # (16, 64, 64, 3) moving texture
    write_video(d / "clip.mp4", frames, fps=16)
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(d / "still.png")
    return d


def test_folder_evaluation_is_deterministic_and_written(tiny_model, media_folder, tmp_path):
    a = ev.evaluate(tiny_model, media_folder, tmp_path / "a")
    b = ev.evaluate(tiny_model, media_folder, tmp_path / "b")
    assert [r["psnr"] for r in a.rows] == [r["psnr"] for r in b.rows]
    assert [r["psnr_frames"] for r in a.rows] == [r["psnr_frames"] for r in b.rows]
    assert a.summary["codebook"] == b.summary["codebook"]
    kinds = {r["key"]: (r["kind"], r["bucket"], r["frames"]) for r in a.rows}
    assert kinds == {"clip.mp4": ("video", "64x64", 16), "still.png": ("image", "96x64", 1)}
    assert a.summary["images"]["clips"] == 1 and a.summary["videos"]["clips"] == 1
    assert a.summary["overall"]["psnr"] == pytest.approx((a.rows[0]["psnr"] + a.rows[1]["psnr"]) / 2)
    assert a.summary["lpips_available"] is False and a.summary["overall"]["lpips"] is None
    assert len(a.summary["codebook"]) == 4  # the debug PVQ has 4 pyramid levels
    for st in a.summary["codebook"].values():
        assert 0 < st["usage"] <= 1 and 1 <= st["perplexity"] <= st["codes_used"]
    table = pq.read_table(tmp_path / "a" / sm.CLIPS_FILE).to_pylist()
    assert [r["psnr"] for r in table] == [r["psnr"] for r in a.rows]
    video = next(r for r in table if r["kind"] == "video")
    assert len(video["psnr_frames"]) == 16 and video["psnr"] == pytest.approx(np.mean(video["psnr_frames"]))
    summary = json.loads((tmp_path / "a" / sm.SUMMARY_FILE).read_text())
    assert summary["overall"]["psnr"] == a.summary["overall"]["psnr"]
    assert all(math.isfinite(r["psnr"]) and 0 < r["ssim"] < 1 for r in a.rows)


def test_tiled_and_untiled_evaluation_agree(tiny_model, media_folder):
    tiled = ev.evaluate(tiny_model, media_folder, tiled=True)
    whole = ev.evaluate(tiny_model, media_folder, tiled=False)
    for r1, r2 in zip(tiled.rows, whole.rows):
        assert r1["psnr"] == pytest.approx(r2["psnr"], abs=1e-3)


def test_shard_evaluation_covers_every_val_sample_once(tiny_model, shards):
    from data_prep import manifest

    res = ev.evaluate(tiny_model, shards, limit=None)
    val = sorted((s["key"], s["bucket"], s["frames"]) for s in manifest.read_version(shards)["samples"]
                 if s["split"] == "val")
    assert sorted((r["key"], r["bucket"], r["frames"]) for r in res.rows) == val
    assert res.summary["data_version"] == manifest.latest_version(shards)
    assert res.summary["images"]["clips"] == sum(1 for v in val if v[2] == 1)
    assert res.summary["videos"]["clips"] == sum(1 for v in val if v[2] > 1)


def test_bad_inputs_name_the_problem(tiny_model, tmp_path):
    with pytest.raises(sm.EvaluationError, match="not a model directory"):
        ev.evaluate(tmp_path, tmp_path)
    with pytest.raises(sm.EvaluationError, match="no videos"):
        ev.evaluate(tiny_model, tmp_path)
    with pytest.raises(sm.EvaluationError, match="neither a shard dataset"):
        ev.evaluate(tiny_model, tmp_path / "missing")


def test_eval_command_prints_table(tiny_model, media_folder, tmp_path, capsys):
    assert ev.eval_command(str(tiny_model), str(media_folder), tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert "videos (WebVid-Val)" in out and "absent" in out and (tmp_path / "o" / sm.SUMMARY_FILE).is_file()
    assert ev.eval_command(str(tmp_path), str(media_folder)) == 2


def test_eval_and_reproduce_commands_of_the_cli(tiny_model, media_folder, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    res = CliRunner().invoke(app, ["eval", "--model", str(tiny_model), "--data", str(media_folder),
                                   "--out", str(tmp_path / "o"), "--limit", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / sm.SUMMARY_FILE).read_text())["overall"]["clips"] == 1
    bad = CliRunner().invoke(app, ["reproduce", "runs:/x", "--dry-run", "--tracking-uri",
                                   f"sqlite:///{tmp_path / 'm.db'}"])
    assert bad.exit_code == 2
