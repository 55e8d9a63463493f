import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pvq_model.demo import synthetic_clip
from pvq_model.eval.video_io import MediaError, read_video, write_video

runner = CliRunner()


def test_help_lists_the_subcommands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("reconstruct", "info", "config", "demo"):
        assert cmd in res.output


def test_console_entry_point_exists():
    exe = Path(sys.executable).with_name("pvq")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "reconstruct" in out.stdout


def test_info_prints_latent_shapes():
    res = runner.invoke(app, ["info"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "6x34x60x16" in res.output  # 1920x1080, 96 frames
    assert "1x8x8x16" in res.output  # 256x256, 16 frames


def test_config_errors_are_clear(configs):
    res = runner.invoke(app, ["config", str(configs / "debug.yaml"), "--set", "model.encoder.fftt=1"])
    assert res.exit_code == 2 and "model.encoder.fftt" in res.output


def test_video_io_round_trip(tmp_path):
    frames = synthetic_clip(0, 8, 48, 64)
    path = write_video(tmp_path / "a.mp4", frames, fps=10, crf=0)
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == pytest.approx(10)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 5  # lossless luma, 4:2:0 chroma on sharp colour edges
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(MediaError, match="bad.mp4"):
        read_video(tmp_path / "bad.mp4")


def _reconstruct(src: Path, dst: Path, *extra):
    res = runner.invoke(app, ["reconstruct", str(src), str(dst), *extra], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def test_reconstruct_synthetic_clip(tmp_path):
    src = write_video(tmp_path / "in.mp4", synthetic_clip(1, 20, 48, 80), fps=12)
    output = _reconstruct(src, tmp_path / "out.mp4")
    frames, _ = read_video(tmp_path / "out.mp4")
    assert frames.shape == (20, 48, 80, 3)
    psnr = float(re.search(r"│\s+([\d.]+)\s+│\s+[\d.]+\s+│\s+absent", output).group(1))
    assert 0 < psnr < 60


@pytest.mark.media
def test_reconstruct_real_footage(media_dir, tmp_path):
    src = media_dir / "videos" / "arm_wrestling_340x256.mp4"
    _reconstruct(src, tmp_path / "out.mp4", "--max-frames", "16")
    src_frames, _ = read_video(src, 16)
    out_frames, _ = read_video(tmp_path / "out.mp4")
    assert out_frames.shape == src_frames.shape


@pytest.mark.media
def test_reconstruct_real_photo(media_dir, tmp_path):
    src = media_dir / "images" / "imageio-binaries__wikkie.png"
    _reconstruct(src, tmp_path / "out.mp4")
    out_frames, _ = read_video(tmp_path / "out.mp4")
    assert out_frames.shape == (1, 512, 512, 3)
