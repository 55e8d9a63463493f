"""Probe a media file with ffmpeg-python (``ffprobe``): size, fps, frames, codec, duration.

Bad inputs do not raise: :func:`probe` returns a :class:`Probe` with ``error`` set to a reason
(``missing``, ``empty_file``, ``unreadable``, ``no_video_stream``, ``unreadable_image``,
``image_too_large``, ``unsupported_format``) and a detail.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction

import ffmpeg

# ffmpeg/ffprobe only ever read local files here (remote sources are downloaded through fsspec first),
# and only through the demuxers of the containers the project accepts. Without these lists a playlist
# saved as ``x.mp4`` (HLS, concat, ...) makes ffmpeg open other files or URLs it names.
PROTOCOL_WHITELIST = "file"
FORMAT_WHITELIST = ",".join(["mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi",
                             "image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe"])
INPUT_ARGS = ["-protocol_whitelist", PROTOCOL_WHITELIST, "-format_whitelist", FORMAT_WHITELIST]
"""Put before ``-i``: the input options every ffmpeg/ffprobe call on a source uses."""


def ffmpeg_url(path: str) -> str:
    """``path`` as an ffmpeg ``file:`` URL: a name that starts with ``-`` is never parsed as an option,
    and one with ``:`` never as a protocol."""
    return "file:" + os.path.abspath(path)


@dataclass
class Probe:
    width: int = 0
    """Width and height as displayed: a stream rotated by 90 or 270 degrees (display matrix or a
    ``rotate`` tag) has them swapped, as ffmpeg decodes it (autorotation)."""
    height: int = 0
    fps: float = 0.0
    frames: int = 0
    codec: str = ""
    duration: float = 0.0
    rotation: int = 0
    """Display rotation in degrees (0, 90, 180, 270, counter-clockwise as ffprobe reports it)."""
    error: str | None = None
    detail: str = ""


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


def rotation_of(stream: dict) -> int:
    """The display rotation of an ffprobe stream dict, in [0, 360): display-matrix side data, else the
    legacy ``rotate`` tag."""
    for sd in stream.get("side_data_list") or []:
        if "rotation" in sd:
            try:
                return int(round(float(sd["rotation"]))) % 360
            except (TypeError, ValueError):
                pass
    try:
        return int(round(float((stream.get("tags") or {}).get("rotate", 0)))) % 360
    except (TypeError, ValueError):
        return 0


def probe(path: str, kind: str = "video") -> Probe:
    """Probe the local file ``path``; ``kind`` is ``video`` or ``image``."""
    if not os.path.exists(path):
        return Probe(error="missing", detail=f"no such file: {path}")
    if os.path.getsize(path) == 0:
        return Probe(error="empty_file", detail=f"file has 0 bytes: {path}")
    if kind == "image":
        return _probe_image(path)
    try:
        safe = {"protocol_whitelist": PROTOCOL_WHITELIST, "format_whitelist": FORMAT_WHITELIST}
        info = ffmpeg.probe(ffmpeg_url(path), select_streams="v:0", **safe)
        streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
        if streams and not int(streams[0].get("nb_frames") or 0):  # no frame count in the header: count packets
            info = ffmpeg.probe(ffmpeg_url(path), count_packets=None, select_streams="v:0", **safe)
    except ffmpeg.Error as e:
        msg = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        refused = [m for m in msg if "not on whitelist" in m]
        if refused:  # e.g. an HLS or concat playlist with a video extension
            line = re.sub(r" @ 0x[0-9a-f]+", "", refused[0].strip())  # no pointer: the detail is deterministic
            return Probe(error="unsupported_format", detail=f"{path}: container refused ({line})")
        return Probe(error="unreadable", detail=f"ffprobe cannot read {path}: {msg[-1] if msg else e}")
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
    if not streams:
        return Probe(error="no_video_stream", detail=f"no video stream in {path}")
    s = streams[0]
    fmt = info.get("format", {})
    frames = int(s.get("nb_read_packets") or s.get("nb_frames") or 0)  # header count (mp4) or packets
    fps = _rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate"))
    duration = float(s.get("duration") or fmt.get("duration") or 0.0)
    w, h, rot = int(s.get("width") or 0), int(s.get("height") or 0), rotation_of(s)
    if rot % 180 == 90:  # ffmpeg's decoder output (autorotate) is the displayed, transposed picture
        w, h = h, w
    p = Probe(width=w, height=h, fps=fps, frames=frames, codec=s.get("codec_name", ""), duration=duration,
              rotation=rot)
    if p.width <= 0 or p.height <= 0 or frames <= 0:
        p.error, p.detail = "unreadable", f"video stream of {path} has size {p.width}x{p.height}, {frames} frames"
    return p


def _probe_image(path: str) -> Probe:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # above Image.MAX_IMAGE_PIXELS PIL only warns (and at 2x raises): both are refused, before decoding
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode fully: a valid header with broken data still fails here
                w, h = im.size
                fmt = (im.format or "").lower()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return Probe(error="image_too_large", detail=f"{path}: {e} (a decompression bomb, or raise "
                                                    f"PIL.Image.MAX_IMAGE_PIXELS for a real image this large)")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return Probe(error="unreadable_image", detail=f"cannot decode image {path}: {e}")
    return Probe(width=w, height=h, fps=0.0, frames=1, codec=fmt, duration=0.0)
