"""pvq_model.eval.baselines: a tiny random diffusers AutoencoderKLCogVideoX evaluated on generated clips in
the evaluation format, and placed beside PVQ-VAE in a report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pvq_model.eval import baselines as bl
from pvq_model.eval.summary import EvaluationError
from pvq_model.metrics import clip_metrics


@pytest.fixture(scope="module")
def cogvideox(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(0)
    m = AutoencoderKLCogVideoX(block_out_channels=(8, 16, 16, 16), latent_channels=4, norm_num_groups=4,
                               layers_per_block=1, temporal_compression_ratio=4,
                               down_block_types=("CogVideoXDownBlock3D",) * 4,
                               up_block_types=("CogVideoXUpBlock3D",) * 4)
    d = tmp_path_factory.mktemp("cogvideox")
    m.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    from pvq_model.demo import synthetic_clip
    from pvq_model.eval.video_io import write_video

    d = tmp_path_factory.mktemp("media")
    write_video(d / "a.mp4", synthetic_clip(0, 16, 64, 64), fps=8, crf=10)
    write_video(d / "b.mp4", synthetic_clip(1, 10, 36, 40), fps=8, crf=10)  # 36 rows: padded to 40
    Image.fromarray(synthetic_clip(2, 1, 64, 64)[0]).save(d / "c.png")
    return d


def test_reconstruct_pads_and_crops_back(cogvideox):
    model = bl.load_diffusers_autoencoder(cogvideox)
    assert bl._factors(model) == (4, 8)
    for shape in [(1, 3, 16, 64, 64), (1, 3, 10, 36, 40), (1, 3, 1, 64, 64)]:
        x = torch.rand(shape) * 2 - 1
        y = bl.reconstruct(model, x)
        assert y.shape == x.shape and y.abs().max() <= 1.0
        assert torch.equal(y, bl.reconstruct(model, x))  # deterministic (latent mode, no sampling)


def test_load_errors_name_the_fix(tmp_path):
    with pytest.raises(EvaluationError, match="no config.json"):
        bl.load_diffusers_autoencoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(EvaluationError, match="not a diffusers autoencoder"):
        bl.load_diffusers_autoencoder(tmp_path)


def test_baseline_evaluation_and_report(cogvideox, media, tmp_path):
    res = bl.evaluate_baseline(cogvideox, media, tmp_path / "eval", name="CogVideoX (tiny, random)")
    s = res.summary
    assert (s["images"]["clips"], s["videos"]["clips"]) == (1, 2)
    assert s["images"]["lpips"] is None and s["codebook"] == {}
    # the stored numbers are the metrics of reconstruct() on the same clips
    from pvq_model.eval.evaluate import iter_clips

    model = bl.load_diffusers_autoencoder(cogvideox)
    by_key = {r["key"]: r for r in res.rows}
    for clip in iter_clips(media):
        m = clip_metrics(clip.video, bl.reconstruct(model, clip.video), clip.mask)
        assert by_key[clip.key]["psnr"] == pytest.approx(m.psnr[0])
        assert len(by_key[clip.key]["psnr_frames"]) == clip.frames
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["videos"]["psnr"] == pytest.approx(
        np.mean([by_key["a.mp4"]["psnr"], by_key["b.mp4"]["psnr"]]))

    from pvq_model.eval.report import build_report

    page = build_report(tmp_path / "eval", tmp_path / "report", clips=3)
    text = page.read_text()
    assert "CogVideoX (tiny, random)" in text and "continuous" in text
    meta = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(meta["clips"]) == 3 and "codebook" not in meta["figures"]
    for c in meta["clips"]:
        assert (tmp_path / "report" / c["grid"]).stat().st_size > 0
