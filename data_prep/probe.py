"""Probe a media file with ffmpeg-python (``ffprobe``): size, fps, frames, codec, duration.

Bad inputs do not raise: :func:`probe` returns a :class:`Probe` with ``error`` set to a reason
(``missing``, ``empty_file``, ``unreadable``, ``no_video_stream``, ``unreadable_image``) and a detail.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from fractions import Fraction

import ffmpeg


@dataclass
class Probe:
    width: int = 0
    height: int = 0
    fps: float = 0.0
    frames: int = 0
    codec: str = ""
    duration: float = 0.0
    error: str | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _rate(text: str | None) -> float:
    try:
        r = Fraction(text or "0")
        return float(r) if r > 0 else 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0


def probe(path: str, kind: str = "video") -> Probe:
    """Probe the local file ``path``; ``kind`` is ``video`` or ``image``."""
    if not os.path.exists(path):
        return Probe(error="missing", detail=f"no such file: {path}")
    if os.path.getsize(path) == 0:
        return Probe(error="empty_file", detail=f"file has 0 bytes: {path}")
    if kind == "image":
        return _probe_image(path)
    try:
        info = ffmpeg.probe(path, select_streams="v:0")
        streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
        if streams and not int(streams[0].get("nb_frames") or 0):  # no frame count in the header: count packets
            info = ffmpeg.probe(path, count_packets=None, select_streams="v:0")
    except ffmpeg.Error as e:
        msg = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        return Probe(error="unreadable", detail=f"ffprobe cannot read {path}: {msg[-1] if msg else e}")
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
    if not streams:
        return Probe(error="no_video_stream", detail=f"no video stream in {path}")
    s = streams[0]
    fmt = info.get("format", {})
    frames = int(s.get("nb_read_packets") or s.get("nb_frames") or 0)  # header count (mp4) or packets
    fps = _rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate"))
    duration = float(s.get("duration") or fmt.get("duration") or 0.0)
    p = Probe(width=int(s.get("width") or 0), height=int(s.get("height") or 0), fps=fps, frames=frames,
              codec=s.get("codec_name", ""), duration=duration)
    if p.width <= 0 or p.height <= 0 or frames <= 0:
        p.error, p.detail = "unreadable", f"video stream of {path} has size {p.width}x{p.height}, {frames} frames"
    return p


def _probe_image(path: str) -> Probe:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # decode fully: a valid header with broken data still fails here
            w, h = im.size
            fmt = (im.format or "").lower()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return Probe(error="unreadable_image", detail=f"cannot decode image {path}: {e}")
    return Probe(width=w, height=h, fps=0.0, frames=1, codec=fmt, duration=0.0)
