"""Probe a media file in-process with PyAV (libav): size, fps, frames, codec, duration, rotation.

Videos are opened with PyAV under the same protocol and container whitelists as every ffmpeg call
(no ``ffprobe`` process: its start-up, mostly the dynamic linker, cost ~17 % of a source's time in
the shard job); images with Pillow.

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

# ffmpeg/ffprobe only ever read local files here (remote sources are downloaded through fsspec first),
# and only through the demuxers of the containers the project accepts. Without these lists a playlist
# saved as ``x.mp4`` (HLS, concat, ...) makes ffmpeg open other files or URLs it names.
PROTOCOL_WHITELIST = "file"
FORMAT_WHITELIST = ",".join(["mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi",
                             "image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe"])
OPEN_OPTIONS = {"protocol_whitelist": PROTOCOL_WHITELIST, "format_whitelist": FORMAT_WHITELIST}
"""The same whitelists as libav options, for PyAV's ``av.open``."""
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


def probe(path: str, kind: str = "video") -> Probe:
    """Probe the local file ``path``; ``kind`` is ``video`` or ``image``."""
    if not os.path.exists(path):
        return Probe(error="missing", detail=f"no such file: {path}")
    if os.path.getsize(path) == 0:
        return Probe(error="empty_file", detail=f"file has 0 bytes: {path}")
    if kind == "image":
        return _probe_image(path)
    import av  # PyAV: libav in-process, ~10 ms a video where an ffprobe process costs ~70-90 ms (its linker)

    level, skip = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.ERROR)  # libav's error lines name the refused container,
    av.logging.set_skip_repeated(False)  # also when the file before was refused in the same words
    try:
        with av.logging.Capture() as logs:
            return _probe_video(path, av, logs)
    finally:
        av.logging.set_level(level)
        av.logging.set_skip_repeated(skip)


def _log_line(entry: tuple) -> str:
    _level, name, text = entry
    line = re.sub(r" @ 0x[0-9a-f]+", "", text.strip())  # no pointer: the detail is deterministic
    return f"[{name}] {line}" if name else line


def _probe_video(path: str, av, logs: list) -> Probe:
    try:
        container = av.open(ffmpeg_url(path), options=OPEN_OPTIONS)
    except (av.FFmpegError, UnicodeDecodeError) as e:
        # a playlist (HLS, concat) or another container outside FORMAT_WHITELIST: libav refuses it
        # ("not on whitelist"), or declines to detect an HLS playlist with a video extension
        refused = [_log_line(m) for m in logs if "not on whitelist" in m[2] or "Not detecting m3u8/hls" in m[2]]
        if refused:
            return Probe(error="unsupported_format", detail=f"{path}: container refused ({refused[0]})")
        last = _log_line(logs[-1]) if logs else str(e)
        return Probe(error="unreadable", detail=f"cannot read {path}: {last}")
    with container:
        if not container.streams.video:
            return Probe(error="no_video_stream", detail=f"no video stream in {path}")
        s = container.streams.video[0]
        frames = s.frames  # the header's count (mp4); else count the packets, as ffprobe -count_packets
        if not frames:
            frames = sum(1 for pkt in container.demux(s) if pkt.size or pkt.dts is not None)
            container.seek(0)
        rot = _rotation(container, s, av)
        cc = s.codec_context
        fps = float(s.average_rate or 0) or float(s.base_rate or 0)
        duration = float(s.duration * s.time_base) if s.duration else (container.duration or 0) / 1e6
        w, h, codec = cc.width, cc.height, cc.name
    if rot % 180 == 90:  # ffmpeg's decoder output (autorotate) is the displayed, transposed picture
        w, h = h, w
    p = Probe(width=w, height=h, fps=fps, frames=frames, codec=codec, duration=duration, rotation=rot)
    if p.width <= 0 or p.height <= 0 or frames <= 0:
        p.error, p.detail = "unreadable", f"video stream of {path} has size {p.width}x{p.height}, {frames} frames"
    return p


def _rotation(container, stream, av) -> int:
    """The display rotation in [0, 360), from the display matrix libav attaches to decoded frames (a
    stream's own side data is not exposed by PyAV); 0 when no frame decodes (the encode then fails)."""
    stream.codec_context.thread_count = 1  # one frame: no decoder threads to start
    try:
        for frame in container.decode(stream):
            return int(round(frame.rotation)) % 360
    except av.FFmpegError:
        pass
    return 0


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
