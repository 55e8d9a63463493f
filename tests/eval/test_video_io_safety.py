"""`pvq reconstruct`'s readers (video_io.read_video, stream.VideoFileSource) on hostile files (issue 13,
items 2, 8, 9): a playlist saved as .mp4 is refused, a name starting with '-' is a file, and a rotated
video comes out upright with the displayed size."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from pvq_model.eval.stream import VideoFileSource
from pvq_model.eval.video_io import MediaError, read_video, write_video


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vio")
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-frames:v", "8", "-c:v", "libx264", "-qp", "0",
            "-pix_fmt", "yuv444p", str(d / "upright.mp4"))
    _ffmpeg("-i", str(d / "upright.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(d / "rot.mp4"))
    _ffmpeg("-i", str(d / "upright.mp4"), "-c", "copy", "-f", "hls", "-hls_time", "100", str(d / "list.m3u8"))
    (d / "list.m3u8").rename(d / "playlist.mp4")
    (d / "-dash.mp4").write_bytes((d / "upright.mp4").read_bytes())
    return d


def _stream_all(path) -> np.ndarray:
    src = VideoFileSource(path)
    return np.concatenate(list(src.chunks()))


def test_playlist_is_refused_by_both_readers(files):
    with pytest.raises(MediaError, match="unsupported_format"):
        read_video(files / "playlist.mp4")
    with pytest.raises(MediaError, match="unsupported_format"):
        VideoFileSource(files / "playlist.mp4")


def test_name_starting_with_a_dash_is_read_as_a_file(files, monkeypatch):
    monkeypatch.chdir(files)
    a, _ = read_video("-dash.mp4")
    b, _ = read_video(files / "upright.mp4")
    assert a.shape == (8, 64, 96, 3) and np.array_equal(a, b)
    assert np.array_equal(_stream_all("-dash.mp4"), b)
    out = write_video("-out.mp4", a, fps=10)
    assert (files / "-out.mp4").is_file() and str(out) == "-out.mp4"


def test_rotated_video_reads_upright_in_both_readers(files):
    upright, _ = read_video(files / "upright.mp4")
    shown, _ = read_video(files / "rot.mp4")
    assert shown.shape == (8, 96, 64, 3)
    assert any(np.array_equal(shown, np.rot90(upright, k, axes=(1, 2))) for k in (1, -1))
    assert np.array_equal(_stream_all(files / "rot.mp4"), shown)
