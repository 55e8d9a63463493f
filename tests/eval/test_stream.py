"""Streaming reconstruction (pvq_model.eval.stream): the same numbers as the in-memory tiled path, with
buffers that do not grow with the clip."""

import subprocess

import numpy as np
import pytest
import torch

from pvq_model.eval import naive
from pvq_model.metrics import clip_metrics
from pvq_model.eval.stream import (READ_CHUNK, Baselines, TensorSource, VideoFileSource, chunk_borders, seam_dip,
                              reconstruct_stream)
from pvq_model.tiling import TileSpec, tiled_apply, tiled_stream, window_frames
from pvq_model.eval.video_io import read_video, to_tensor, to_uint8, write_video
from helpers import debug_model

# tiles in every axis: 16-frame chunks with a 16-frame encode halo, 64-px tiles, 1-latent-frame decode chunks
TILED = ["inference.tile_size=64", "inference.tile_overlap=32", "inference.tile_halo=32",
         "inference.chunk_frames=16", "inference.chunk_overlap=0", "inference.chunk_halo=16",
         "inference.decode_halo=64", "inference.decode_halo_frames=0"]


def model_for(configs, *overrides):
    model = debug_model(*TILED, *overrides, seed=42)
    for m in model.modules():  # real receptive fields (a new model is its shortcut path)
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight)
    return model


def make_clip(path, frames: int, size: str = "100x70") -> str:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
                    "-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", str(path)],
                   check=True)
    return str(path)


def test_streamed_reconstruction_equals_in_memory(configs, tmp_path):
    clip = make_clip(tmp_path / "in.mp4", 37)  # 37 frames, 100 x 70: padded in every axis
    model = model_for(configs)
    frames, _ = read_video(clip)
    x = to_tensor(frames)
    recon, quant = model.reconstruct(x, tiled=True)  # the in-memory path
    want = clip_metrics(x, recon)

    got = []
    res = reconstruct_stream(model, VideoFileSource(clip), out=tmp_path / "out.mp4",
                             on_frames=lambda t0, o, r: got.append((t0, o, r)))
    assert [t for t, _, _ in got] == list(range(37))  # frame by frame, in order
    assert np.array_equal(np.concatenate([o for _, o, _ in got]), frames)
    assert np.array_equal(np.concatenate([r for _, _, r in got]), to_uint8(recon))
    assert torch.equal(res.quant.quantized, quant.quantized)
    assert res.size == (37, 70, 100)
    np.testing.assert_allclose(res.metrics["psnr_frames"], want.psnr_frames[0], rtol=1e-5)
    assert res.metrics["psnr"] == pytest.approx(want.psnr[0], rel=1e-5)
    assert res.metrics["ssim"] == pytest.approx(want.ssim[0], rel=1e-5)
    assert res.metrics["lpips"] is None
    written, fps = read_video(tmp_path / "out.mp4")  # the mp4, written frame by frame as chunks finish
    whole, _ = read_video(write_video(tmp_path / "whole.mp4", to_uint8(recon), fps=25.0))
    assert written.shape == frames.shape and fps == 25.0
    assert np.array_equal(written, whole)  # the same encoder settings as write_video


def test_tensor_source_equals_in_memory(configs):
    model = model_for(configs)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 20, 64, 96, generator=g) * 2 - 1
    recon, _ = model.reconstruct(x, tiled=True)
    got = []
    res = reconstruct_stream(model, TensorSource(x), on_frames=lambda t0, o, r: got.append(r), baselines=True)
    assert np.array_equal(np.concatenate(got), to_uint8(recon))
    assert res.metrics["psnr"] == pytest.approx(clip_metrics(x, recon).psnr[0], rel=1e-5)


def test_buffers_do_not_grow_with_frames(configs, tmp_path):
    """The encode pass holds at most one window of uint8 frames (plus one read), the decoder hands
    over one frame at a time: the same for 48 and 160 frames."""
    model = model_for(configs)
    enc, _ = model._specs()
    held, out = [], []
    for n in (48, 160):
        res = reconstruct_stream(model, VideoFileSource(make_clip(tmp_path / f"{n}.mp4", n, "64x64")))
        assert res.size[0] == n and len(res.metrics["psnr_frames"]) == n
        held.append(res.max_frames_held)
        out.append(res.max_output_frames)
    bound = window_frames((160, 64, 64), enc) + READ_CHUNK - 1
    assert held[0] == held[1] <= bound, (held, bound)
    assert out == [1, 1]


def test_tiled_stream_reads_bounded_windows_in_order():
    """The engine's reads: non-decreasing in time and never larger than chunk + halos, however long
    the input; output frames come one by one, in order, equal to tiled_apply's."""
    conv = torch.nn.Conv3d(2, 3, 3, padding=1)
    spec = TileSpec((8, 16, 16), (4, 8, 8), (4, 4, 4))
    for t in (24, 96):
        x = torch.randn(1, 2, t, 20, 36)
        reads, frames = [], []

        def read(t0, t1, h0, h1, w0, w1):
            reads.append((t0, t1))
            return x[:, :, t0:t1, h0:h1, w0:w1]

        with torch.no_grad():
            tiled_stream(conv, read, (t, 20, 36), spec, (1, 1, 1), lambda i, y: frames.append((i, y)))
            full = tiled_apply(conv, x, spec, (1, 1, 1))
        assert [i for i, _ in frames] == list(range(t))
        assert torch.equal(torch.cat([y for _, y in frames], 2), full)
        assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in zip(reads, reads[1:]))
        assert max(t1 - t0 for t0, t1 in reads) == 8 + 2 * 4


def test_streamed_baselines_equal_naive():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 21, 40, 70, generator=g) * 2 - 1  # not multiples of the (16, 32, 32) blocks
    base = Baselines((21, 40, 70), (16, 32, 32))
    for t in range(0, 21, 8):
        base.observe(x[:, :, t:t + 8])
    for t in range(21):
        base.compare(t, x[:, :, t:t + 1])
    got = base.results()
    for name, y in (("mean_colour", naive.mean_colour(x)), ("pooled", naive.pooled(x, (16, 32, 32)))):
        m = clip_metrics(x, y)
        assert got[f"{name}_psnr"] == pytest.approx(m.psnr[0], rel=1e-5), name
        assert got[f"{name}_ssim"] == pytest.approx(m.ssim[0], rel=1e-4, abs=1e-5), name


def test_chunk_borders(configs):
    model = model_for(configs)  # 1-latent-frame decode chunks, no overlap, no halo
    assert chunk_borders(model, 37) == [16, 32]
    whole = model_for(configs, "inference.decode_halo_frames=96")
    assert chunk_borders(whole, 37) == []


def test_seam_dip():
    psnr = [30.0] * 48
    psnr[15] = psnr[16] = 29.0  # a 1 dB dip at the border 16
    assert seam_dip(psnr, [16]) == pytest.approx(1.0)
    assert seam_dip(psnr, []) is None
    periodic = [30.0 - (i % 16 in (0, 15)) for i in range(48)]  # the latent's own 16-frame pattern
    assert seam_dip(periodic, [16]) > 0.9
    assert seam_dip(periodic, [16], period=16) == pytest.approx(0.0)


def test_streamed_evaluation_of_a_padded_shard_clip_equals_in_memory(configs):
    """A shard clip's padding frames are encoded (as in memory) but not measured; the baselines too."""
    from pvq_model.eval.evaluate import Clip, baseline_metrics, evaluate_model

    model = model_for(configs)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 32, 64, 64, generator=g) * 2 - 1
    x[:, :, 21:] = 0  # 21 real frames, then the loader's zero padding
    mask = torch.zeros(1, 32, dtype=torch.bool)
    mask[:, :21] = True
    rows, _ = evaluate_model(model, iter([Clip("k", "video", "64x64", x, mask)]), tiled=True)
    recon, _ = model.reconstruct(x, tiled=True)
    want = clip_metrics(x, recon, mask)
    assert rows[0]["frames"] == 21 and rows[0]["length"] == 32
    np.testing.assert_allclose(rows[0]["psnr_frames"], want.psnr_frames[0], rtol=1e-5)
    assert rows[0]["ssim"] == pytest.approx(want.ssim[0], rel=1e-5)
    for k, v in baseline_metrics(x, mask, model.factor).items():
        assert rows[0][k] == pytest.approx(v, rel=1e-4), k
