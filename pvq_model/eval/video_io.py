"""Reading and writing clips with ffmpeg (ffmpeg-python): raw RGB frames through pipes.

Clips are uint8 numpy arrays (T, H, W, 3); :func:`to_tensor` / :func:`to_uint8` convert to and from
the model's (1, 3, T, H, W) float layout in [-1, 1].
"""

from __future__ import annotations

import shutil
from pathlib import Path

import ffmpeg
import numpy as np
import torch
from torch import Tensor


class MediaError(RuntimeError):
    """A file cannot be read as video/image; the message names the file and the reason."""


def require_ffmpeg() -> None:
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise MediaError(f"{tool} not found on PATH: install it (apt-get install -y ffmpeg)")


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode ``path`` to (T, H, W, 3) uint8 RGB; images give T = 1. Returns (frames, fps)."""
    from data_prep.probe import FORMAT_WHITELIST, PROTOCOL_WHITELIST, ffmpeg_url, probe  # one ffprobe reader

    path = Path(path)
    require_ffmpeg()
    meta = probe(str(path))
    if meta.error is not None:
        raise MediaError(f"{path}: {meta.error}: {meta.detail}")
    w, h = meta.width, meta.height  # as displayed: ffmpeg applies the rotation while decoding, and so does probe
    stream = ffmpeg.input(ffmpeg_url(str(path)), protocol_whitelist=PROTOCOL_WHITELIST,
                          format_whitelist=FORMAT_WHITELIST)
    kwargs = {"format": "rawvideo", "pix_fmt": "rgb24"}
    if max_frames:
        kwargs["frames:v"] = max_frames
    try:
        raw, _ = stream.output("pipe:", **kwargs).run(capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as e:
        raise MediaError(f"{path}: decoding failed: {e.stderr.decode(errors='replace').strip()[-300:]}") from None
    n = len(raw) // (w * h * 3)
    if n == 0:
        raise MediaError(f"{path}: video has 0 decodable frames")
    return np.frombuffer(raw[: n * w * h * 3], np.uint8).reshape(n, h, w, 3), meta.fps or 25.0


def write_video(path: str | Path, frames: np.ndarray, fps: float = 25.0, crf: int = 16) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames to an H.264 mp4 (yuv420p; odd sizes padded by one)."""
    from data_prep.probe import ffmpeg_url

    require_ffmpeg()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames.shape
    proc = (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
        .output(ffmpeg_url(str(path)), vcodec="libx264", pix_fmt="yuv420p", crf=crf, preset="medium",
                vf="pad=ceil(iw/2)*2:ceil(ih/2)*2")
        .overwrite_output()
        .run_async(pipe_stdin=True, quiet=True)
    )
    proc.stdin.write(np.ascontiguousarray(frames).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        raise MediaError(f"{path}: ffmpeg encoding failed: {proc.stderr.read().decode(errors='replace')[-300:]}")
    return path


def to_tensor(frames: np.ndarray) -> Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float in [-1, 1]."""
    x = torch.from_numpy(np.array(frames, copy=True)).float().div(127.5).sub(1.0)
    return x.permute(3, 0, 1, 2).unsqueeze(0)


def to_uint8(x: Tensor) -> np.ndarray:
    """(1, 3, T, H, W) float in [-1, 1] -> (T, H, W, 3) uint8."""
    y = ((x[0].clamp(-1, 1) + 1) * 127.5).round().byte()
    return y.permute(1, 2, 3, 0).cpu().numpy()
