"""pvq_model.eval.report: figures on known inputs, MLflow curves read back exactly, and a full report of a
tiny model evaluated on generated clips (HTML parses, every link resolves, PNGs have the expected
sizes, the table carries the evaluation's numbers)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pvq_model.eval import report as rp
from pvq_model.eval import tables
from pvq_model.eval.curves import read_metrics
from helpers import debug_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.tags: list[str] = []
        self.cells: list[str] = []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        for k in ("src", "href"):
            if a.get(k):
                self.links.append((tag, a[k]))
        self._in_td = tag == "td"

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_td = False

    def handle_data(self, data):
        if self._in_td:
            self.cells.append(data)


def test_frame_grid_layout_and_amplified_error():
    orig = np.zeros((8, 6, 5, 3), np.uint8)
    orig[:, :, :, 0] = np.arange(8)[:, None, None] * 10  # frame t has red = 10 t
    recon = orig.copy()
    recon[..., 1] = 20  # green off by 20 everywhere
    grid = rp.frame_grid(orig, recon, frames=4, error_gain=4.0)
    assert grid.shape == (3 * 6, 4 * 5, 3) and grid.dtype == np.uint8
    # frames 0, 2, 5, 7 (evenly spaced incl. first and last), left to right
    assert [int(grid[0, 5 * i, 0]) for i in range(4)] == [0, 20, 50, 70]
    assert np.array_equal(grid[6:12], np.concatenate(list(recon[[0, 2, 5, 7]]), axis=1))
    err = grid[12:18]
    assert (err[..., 1] == 80).all() and (err[..., 0] == 0).all()
    # a one-frame clip (an image) gives one column; the error saturates at 255
    one = rp.frame_grid(np.zeros((1, 4, 4, 3), np.uint8), np.full((1, 4, 4, 3), 100, np.uint8), frames=4)
    assert one.shape == (12, 4, 3) and (one[8:] == 255).all()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory whose mlflow.db holds a few known per-step metrics (as the trainer logs them)."""
    from mlflow.tracking import MlflowClient

    d = tmp_path_factory.mktemp("run")
    client = MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = client.create_experiment("pvq", artifact_location=(d / "mlartifacts").as_uri())
    run = client.create_run(exp)
    for step in range(6):
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
        client.log_metric(run.info.run_id, "recon", 0.5 / (step + 1), step=step)
        client.log_metric(run.info.run_id, "quant/usage", 0.1 * step, step=step)
    client.set_terminated(run.info.run_id)
    return d


def test_read_metrics_exact(run_dir):
    m = read_metrics(run_dir / "mlflow.db")
    assert set(m) == {"loss", "recon", "quant/usage"}
    assert m["loss"] == [(s, pytest.approx(1.0 / (s + 1))) for s in range(6)]
    assert read_metrics(run_dir / "mlflow.db", ("recon",))["recon"][-1] == (5, pytest.approx(0.5 / 6))
    assert read_metrics(run_dir / "missing.db") == {}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A random debug model evaluated on two generated videos and one image (folder input)."""
    from pvq_model.demo import synthetic_clip
    from pvq_model.eval.evaluate import evaluate
    from pvq_model.eval.video_io import write_video

    root = tmp_path_factory.mktemp("report")
    media = root / "media"
    media.mkdir()
    write_video(media / "a_64x64.mp4", synthetic_clip(0, 16, 64, 64), fps=8, crf=10)
    write_video(media / "b_96x64.mp4", synthetic_clip(1, 16, 64, 96), fps=8, crf=10)
    Image.fromarray(synthetic_clip(2, 1, 64, 64)[0]).save(media / "c_image.png")
    model = debug_model().save_pretrained(root / "model")
    res = evaluate(model, media, root / "eval")
    return root, res


def test_report_renders_and_links_resolve(evaluated, run_dir):
    root, res = evaluated
    out = root / "html"
    page = rp.build_report(root / "eval", out, run_dir=run_dir, clips=3, frames=4)
    assert page == out / "index.html"
    parser = _Links()
    parser.feed(page.read_text())
    parser.close()
    assert parser.tags[0] == "html" and "table" in parser.tags
    assert not any(link.startswith(("http:", "https:", "//")) for _, link in parser.links)  # self-contained
    linked = {link for _, link in parser.links}
    for link in linked:
        assert (out / link).is_file() and (out / link).stat().st_size > 0, link

    meta = json.loads((out / "report.json").read_text())
    clips = {c["key"]: c for c in meta["clips"]}
    assert sorted(clips) == ["a_64x64.mp4", "b_96x64.mp4", "c_image.png"]  # the fixed, sorted set
    expected = {"a_64x64.mp4": (3 * 64, 4 * 64), "b_96x64.mp4": (3 * 64, 4 * 96), "c_image.png": (3 * 64, 64)}
    for key, (h, w) in expected.items():
        png = out / clips[key]["grid"]
        assert png.read_bytes()[:8] == PNG_MAGIC and png.name in {Path(x).name for x in linked}
        with Image.open(png) as im:
            assert im.size == (w, h)
            assert np.asarray(im).std() > 0  # not a blank image
    assert clips["c_image.png"]["video"] is None
    for key in ("a_64x64.mp4", "b_96x64.mp4"):  # side-by-side mp4: 2 W x H, every real frame
        from pvq_model.eval.video_io import read_video

        frames, _ = read_video(out / clips[key]["video"])
        assert frames.shape[0] == 16 and frames.shape[2] == 2 * expected[key][1] // 4
    for fig in ("psnr_frames.png", "training.png", "codebook.png"):
        assert fig in linked and (out / fig).read_bytes()[:8] == PNG_MAGIC
        with Image.open(out / fig) as im:
            assert im.size[0] >= 300 and im.size[1] >= 200

    # the table carries the evaluation's numbers; LPIPS is "absent", not 0
    s = res.summary
    assert f"{s['images']['psnr']:.2f}" in parser.cells and f"{s['videos']['psnr']:.2f}" in parser.cells
    assert f"{s['videos']['ssim']:.4f}" in parser.cells
    # the model's LPIPS cells and each baseline's (2 baselines x images, videos)
    assert parser.cells.count("absent") == 2 + 2 * 2 and "PVQ" in parser.cells
    pooled = s["baselines"]["pooled"]
    assert "mean colour (same clips)" in parser.cells and f"{pooled['margin_db']:+.2f}" in parser.cells
    md = (out / "table.md").read_text().splitlines()
    assert md[0].startswith("| Method | Codebook size | Dim | Img PSNR") and md[0].endswith("| Margin (dB) |")
    assert md[2] == (f"| PVQ | 65536 | 16 | {s['images']['psnr']:.2f} | {s['images']['ssim']:.4f} | absent | "
                     f"{s['videos']['psnr']:.2f} | {s['videos']['ssim']:.4f} | absent |  |")
    assert md[4] == (f"| pooled {'x'.join(map(str, pooled['block']))} (same clips) | - | - | "
                     f"{pooled['images']['psnr']:.2f} | {pooled['images']['ssim']:.4f} | absent | "
                     f"{pooled['videos']['psnr']:.2f} | {pooled['videos']['ssim']:.4f} | absent | "
                     f"{pooled['margin_db']:+.2f} |")

    # a second build gives the same clip figures (fixed clips, deterministic model)
    before = {k: (out / c["grid"]).read_bytes() for k, c in clips.items()}
    rp.build_report(root / "eval", out, run_dir=run_dir, clips=3, frames=4)
    assert before == {k: (out / c["grid"]).read_bytes() for k, c in clips.items()}


def test_metrics_table_marks_missing_kinds_and_names_rows(evaluated):
    root, res = evaluated
    s = dict(res.summary)
    s["images"] = {"clips": 0, "frames": 0, "psnr": None, "ssim": None, "lpips": None}
    rows = tables.metrics_table([s, res.summary], names=["only videos", "all"])
    assert rows[1][:6] == ["only videos", "65536", "16", "n/a", "n/a", "n/a"]
    assert rows[4][0] == "all" and rows[4][3] == f"{res.summary['images']['psnr']:.2f}"  # after 2 baseline rows


def _part(clips, psnr, ssim, lpips=None):
    return {"clips": clips, "frames": clips, "psnr": psnr, "ssim": ssim, "lpips": lpips}


def test_metrics_table_shows_the_baselines_under_each_model():
    info = {"method": "PVQ", "codebook_size": 65536, "dim": 16}
    model = {"method_info": info, "images": _part(1, 30.0, 0.9), "videos": _part(2, 28.5, 0.85, 0.123456),
             "overall": _part(3, 29.0, 0.8667),
             "baselines": {"mean_colour": {"overall": _part(3, 11.0, 0.2), "images": _part(1, 12.0, 0.25),
                                           "videos": _part(2, 10.5, 0.175), "margin_db": 18.0, "block": None},
                           "pooled": {"overall": _part(3, 24.25, 0.7), "images": _part(1, 25.0, 0.75),
                                      "videos": _part(2, 23.875, 0.675), "margin_db": 4.75, "block": [4, 8, 8]}}}
    older = {"method_info": {**info, "method": "VQ"}, "images": _part(1, 20.0, 0.5), "videos": _part(0, None, None),
             "overall": _part(1, 20.0, 0.5)}  # an older summary: no baselines
    rows = tables.metrics_table([model, older])
    assert rows[0] == ["Method", "Codebook size", "Dim", "Img PSNR", "Img SSIM", "Img LPIPS", "Vid PSNR", "Vid SSIM",
                       "Vid LPIPS", "Margin (dB)"]
    assert rows[1:] == [
        ["PVQ", "65536", "16", "30.00", "0.9000", "absent", "28.50", "0.8500", "0.1235", ""],
        ["mean colour (same clips)", "-", "-", "12.00", "0.2500", "absent", "10.50", "0.1750", "absent", "+18.00"],
        ["pooled 4x8x8 (same clips)", "-", "-", "25.00", "0.7500", "absent", "23.88", "0.6750", "absent", "+4.75"],
        ["VQ", "65536", "16", "20.00", "0.5000", "absent", "n/a", "n/a", "n/a", ""]]
    assert tables.markdown_table(rows).splitlines()[4] == (
        "| pooled 4x8x8 (same clips) | - | - | 25.00 | 0.7500 | absent | 23.88 | 0.6750 | absent | +4.75 |")
    model["baselines"]["pooled"]["margin_db"] = None  # the model had no PSNR to compare
    assert tables.metrics_table([model])[3][-1] == "n/a"
    # several evaluations of one method (seeds): mean ± sample std (ddof=1)
    seeds = [_part(1, 30.0, 0.9), _part(1, 31.0, 0.92), _part(0, None, None)]  # the last: no clips of this kind
    assert tables.metric_cell(seeds, "psnr", 2) == "30.50 ± 0.71"
    assert tables.metric_cell([_part(1, 30.0, 0.9), _part(1, 31.0, 0.92)], "lpips", 4) == "absent"
    assert tables.metric_cell([{}, _part(0, None, None)], "psnr", 2) == "n/a"
    assert tables.mean_std([2.0]) == (2.0, None) and tables.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))


def test_report_errors_name_the_missing_evaluation(tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.json"):
        rp.build_report(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ValueError, match="at least one"):
        rp.build_report([], tmp_path / "out")


def test_typer_command_writes_the_page(evaluated, run_dir):
    from typer.testing import CliRunner

    from flows.cli import app

    root, _ = evaluated
    res = CliRunner().invoke(app, ["report", "--eval", str(root / "eval"), "--out", str(root / "cli"),
                                   "--run", str(run_dir), "--clips", "1"])
    assert res.exit_code == 0, res.output
    assert (root / "cli" / "index.html").is_file() and len(json.loads((root / "cli" / "report.json").read_text())["clips"]) == 1
    res = CliRunner().invoke(app, ["report", "--eval", str(root / "missing"), "--out", str(root / "cli2")])
    assert res.exit_code == 2 and "summary.json" in res.output
