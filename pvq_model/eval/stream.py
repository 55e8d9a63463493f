"""Streaming reconstruction: clips of any length and size in bounded memory.

``reconstruct_stream(model, source)`` runs in two passes over the clip, and never holds it whole:

1. **encode**: frames come from ffmpeg in chunks (uint8) into a buffer of at most one encode window
   (chunk plus halos, full width); each spatial tile of the window is converted to float, padded as
   :func:`pvq_model.vae.pad_to_grid` pads the clip, and encoded. The latent, 1/16 x 1/32 x 1/32 of the
   clip times 16 channels (1080p x 96 frames: 0.8 MB), is kept and quantized at once, exactly as the
   in-memory path does.
2. **decode**: the latent is decoded chunk by chunk (:func:`pvq_model.tiling.tiled_stream`); every
   finished chunk of output frames is written to the mp4, compared frame by frame with the original
   (decoded again from the file, chunk by chunk) and dropped.

Peak memory is one window of activations, one temporal chunk of output at full size (fp32) and a few
frames of uint8; it does not grow with the number of frames. The numbers equal the in-memory tiled
path (``PVQVAE.reconstruct(x, tiled=True)`` + :func:`pvq_model.metrics.clip_metrics`), which runs the
same engine on a tensor: tests/eval/test_stream.py checks it.

Sources: :class:`VideoFileSource` (a video or image file, through ffmpeg) and :class:`TensorSource`
(a clip already in memory, e.g. a shard sample, which then still avoids the full-size float output).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics import frame_psnr, frame_ssim

READ_CHUNK = 8
"""Frames per read from ffmpeg's pipe."""


# ---------------------------------------------------------------------------------------------
# sources: sequential chunks of (n, H, W, 3) frames, uint8 numpy (files) or float tensors (memory)
# ---------------------------------------------------------------------------------------------
class VideoFileSource:
    """A video (or image) file decoded by ffmpeg to RGB, at most ``max_frames`` frames.

    ``frames`` comes from ffprobe's count; the decode checks it (:class:`FrameBuffer` raises
    :class:`FrameCountChanged` when the file holds fewer, and ``reconstruct_stream`` retries with the
    true count)."""

    def __init__(self, path, max_frames: int | None = None):
        from data_prep.probe import probe

        from .video_io import MediaError, require_ffmpeg

        require_ffmpeg()
        self.path = str(path)
        meta = probe(self.path)
        if meta.error is not None:
            raise MediaError(f"{path}: {meta.error}: {meta.detail}")
        self.width, self.height = meta.width, meta.height
        self.fps = meta.fps or 25.0
        self.max_frames = max_frames
        self.frames = min(meta.frames, max_frames) if max_frames else meta.frames

    @property
    def size(self) -> tuple[int, int, int]:
        return self.frames, self.height, self.width

    def chunks(self, n: int = READ_CHUNK) -> Iterator[np.ndarray]:
        """(k, H, W, 3) uint8 chunks in order, k <= n, ``max_frames`` in all at most."""
        import ffmpeg

        from .video_io import MediaError

        kwargs = {"format": "rawvideo", "pix_fmt": "rgb24"}
        if self.max_frames:
            kwargs["frames:v"] = self.max_frames
        from data_prep.probe import FORMAT_WHITELIST, PROTOCOL_WHITELIST, ffmpeg_url

        # local file only, accepted containers only, never parsed as an option (issue 13)
        src = ffmpeg.input(ffmpeg_url(str(self.path)), protocol_whitelist=PROTOCOL_WHITELIST,
                           format_whitelist=FORMAT_WHITELIST)
        proc = (src.output("pipe:", **kwargs).global_args("-loglevel", "error", "-nostdin")
                .run_async(pipe_stdout=True, pipe_stderr=True))
        frame_bytes = self.width * self.height * 3
        got = 0
        try:
            while True:
                raw = proc.stdout.read(frame_bytes * n)
                k = len(raw) // frame_bytes
                if k:
                    got += k
                    yield np.frombuffer(raw[: k * frame_bytes], np.uint8).reshape(k, self.height, self.width, 3)
                if len(raw) < frame_bytes * n:
                    break
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace")
            proc.stderr.close()
            rc = proc.wait()
        if rc != 0 and got == 0:
            raise MediaError(f"{self.path}: decoding failed: {err.strip()[-300:]}")
        if got == 0:
            raise MediaError(f"{self.path}: video has 0 decodable frames")

    @staticmethod
    def to_float(raw: np.ndarray) -> Tensor:
        """(n, h, w, 3) uint8 -> (1, 3, n, h, w) float in [-1, 1] (as :func:`pvq_model.eval.video_io.to_tensor`)."""
        x = torch.from_numpy(np.array(raw, copy=True)).float().div(127.5).sub(1.0)
        return x.permute(3, 0, 1, 2).unsqueeze(0)


class TensorSource:
    """A clip (1, C, T, H, W) in [-1, 1] already in memory, read as a stream of views."""

    def __init__(self, x: Tensor, fps: float = 25.0):
        self.x = x
        self.frames, self.height, self.width = x.shape[2:]
        self.fps = fps

    @property
    def size(self) -> tuple[int, int, int]:
        return self.frames, self.height, self.width

    def chunks(self, n: int = READ_CHUNK) -> Iterator[Tensor]:
        for t in range(0, self.frames, n):
            yield self.x[0, :, t:t + n].permute(1, 2, 3, 0)  # (k, H, W, C) view

    @staticmethod
    def to_float(raw: Tensor) -> Tensor:
        return raw.permute(3, 0, 1, 2).unsqueeze(0).float()


class FrameCountChanged(RuntimeError):
    """The file decoded to a different number of frames than ffprobe announced."""

    def __init__(self, frames: int):
        super().__init__(f"decoded {frames} frames")
        self.frames = frames


class FrameBuffer:
    """Frames of a source read in order, kept from the oldest frame still needed: windows of the clip
    padded to the grid (zero frames after the last, edge rows and columns replicated).

    ``max_frames_held`` records the most frames held at once (the test of bounded memory)."""

    def __init__(self, source, grid: tuple[int, int, int], on_chunk: Callable | None = None):
        self.source, self.grid = source, grid
        self.it = source.chunks()
        self.parts: list = []  # raw chunks, the first one starting at frame self.start
        self.start = self.end = 0
        self.on_chunk = on_chunk
        self.max_frames_held = 0
        self.done = False

    def _fill(self, t1: int) -> None:
        while self.end < t1 and not self.done:
            try:
                raw = next(self.it)
            except StopIteration:
                self.done = True
                break
            if self.on_chunk is not None:
                self.on_chunk(self.end, raw)
            self.parts.append(raw)
            self.end += raw.shape[0]
            self.max_frames_held = max(self.max_frames_held, self.end - self.start)
        if self.done and self.end != self.source.frames:
            raise FrameCountChanged(self.end)

    def _release(self, t0: int) -> None:
        while self.parts and self.start + self.parts[0].shape[0] <= t0:
            self.start += self.parts.pop(0).shape[0]

    def finish(self) -> None:
        """Read to the end (the encode windows may stop short of the last frame): checks the count."""
        self._release(self.end)
        while not self.done:
            self._fill(self.end + 1)
            self._release(self.end)

    def read(self, t0: int, t1: int, h0: int, h1: int, w0: int, w1: int) -> Tensor:
        """(1, C, t1-t0, h1-h0, w1-w0) float window of the grid-padded clip."""
        real = self.source.frames
        self._release(t0)
        self._fill(min(t1, real))
        a, b = t0, min(t1, real)
        pieces, pos = [], self.start
        for p in self.parts:
            lo, hi = max(a, pos), min(b, pos + p.shape[0])
            if lo < hi:
                pieces.append(p[lo - pos:hi - pos, h0:min(h1, self.source.height), w0:min(w1, self.source.width)])
            pos += p.shape[0]
        raw = pieces[0] if len(pieces) == 1 else (
            np.concatenate(pieces) if isinstance(pieces[0], np.ndarray) else torch.cat(pieces))
        x = self.source.to_float(raw)  # (1, C, b-a, h, w)
        ph, pw = h1 - h0 - x.shape[3], w1 - w0 - x.shape[4]
        if ph or pw:  # rows / columns past the edge: replicated, as pad_to_grid does
            x = F.pad(x, (0, pw, 0, ph, 0, 0), mode="replicate")
        if t1 > real:  # frames past the end: zeros
            x = torch.cat([x, x.new_zeros(*x.shape[:2], t1 - b, *x.shape[3:])], 2)
        return x


# ---------------------------------------------------------------------------------------------
# metrics per frame and the naive baselines, accumulated as chunks pass
# ---------------------------------------------------------------------------------------------
@dataclass
class FrameMetrics:
    """PSNR / SSIM (/ LPIPS) per frame, one frame at a time (SSIM of a 4K frame needs ~1 GB)."""

    lpips: object = None
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    lp: list[float] = field(default_factory=list)

    def add(self, x: Tensor, y: Tensor) -> None:
        """Originals ``x`` and reconstructions ``y``, both (1, C, n, H, W) in [-1, 1]."""
        for i in range(x.shape[2]):
            fx, fy = x[:, :, i], y[:, :, i]  # (1, C, H, W)
            self.psnr.append(float(frame_psnr(fx, fy)[0]))
            self.ssim.append(float(frame_ssim(fx, fy)[0]))
            if self.lpips is not None:
                self.lp.append(float(self.lpips(fx, fy).mean()))

    def clip(self) -> dict:
        """Clip means (each frame counts once) and the per-frame PSNR, as ``clip_metrics`` gives them."""
        return {"psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)),
                "lpips": float(np.mean(self.lp)) if self.lpips is not None else None,
                "psnr_frames": list(self.psnr)}


def _interp_matrix(n_in: int, n_out: int, dtype=torch.float64) -> Tensor:
    """(n_out, n_in) linear interpolation weights of ``F.interpolate(..., align_corners=False)``."""
    m = torch.zeros(n_out, n_in, dtype=dtype)
    scale = n_in / n_out
    for i in range(n_out):
        src = max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = int(src)
        i1 = i0 + 1 if i0 < n_in - 1 else i0
        lam = src - i0
        m[i, i0] += 1.0 - lam
        m[i, i1] += lam
    return m


class Baselines:
    """The mean-colour and pooled baselines of :mod:`pvq_model.eval.naive` of a clip seen chunk by chunk:
    pass 1 (:meth:`observe`) accumulates the clip's mean colour and its block averages (a grid the
    size of the latent, 3 channels); pass 2 (:meth:`compare`) rebuilds the baseline frames of each
    chunk (trilinear upsampling by separable interpolation matrices) and measures them."""

    def __init__(self, size: tuple[int, int, int], factor: tuple[int, int, int]):
        t, h, w = size
        self.size = size
        self.kt, self.fh, self.fw = min(factor[0], t), factor[1], factor[2]
        self.grid = (-(-t // self.kt), -(-h // self.fh), -(-w // self.fw))
        self.sums = torch.zeros(3, *self.grid, dtype=torch.float64)
        self.colour = torch.zeros(3, dtype=torch.float64)
        self.last: Tensor | None = None
        self.seen = 0
        self.metrics = {"mean_colour": FrameMetrics(), "pooled": FrameMetrics()}
        self._low: Tensor | None = None

    def observe(self, x: Tensor) -> None:
        """The next frames of the clip, (1, C, n, H, W) in [-1, 1]."""
        _, h, w = self.size
        ph, pw = (-h) % self.fh, (-w) % self.fw
        for i in range(x.shape[2]):
            f = x[0, :, i].double()  # (C, H, W)
            self.colour += f.sum((1, 2))
            if ph or pw:
                f = F.pad(f[None], (0, pw, 0, ph), mode="replicate")[0]
            blocks = f.reshape(3, self.grid[1], self.fh, self.grid[2], self.fw).sum((2, 4))
            self.sums[:, self.seen // self.kt] += blocks
            self.last = blocks
            self.seen += 1

    def _finish(self) -> Tensor:
        if self._low is None:
            rest = (-self.seen) % self.kt  # the last group is padded by repeating the last frame
            if rest:
                self.sums[:, -1] += rest * self.last
            self._low = self.sums / (self.kt * self.fh * self.fw)
            t, h, w = self.size
            self._mean = self.colour / (t * h * w)
            gt, gh, gw = self.grid
            self._mt = _interp_matrix(gt, gt * self.kt)
            self._mh = _interp_matrix(gh, gh * self.fh)[:h]
            self._mw = _interp_matrix(gw, gw * self.fw)[:w]
        return self._low

    def compare(self, t0: int, x: Tensor) -> None:
        """Measure both baselines on the frames [t0, t0 + n) of the clip, ``x`` (1, C, n, H, W)."""
        low = self._finish()
        n = x.shape[2]
        lowt = torch.einsum("ti,cijk->tcjk", self._mt[t0:t0 + n], low)  # (n, C, gh, gw)
        pooled = torch.einsum("hj,tcjk,wk->tchw", self._mh, lowt, self._mw).float()
        pooled = pooled.permute(1, 0, 2, 3)[None]  # (1, C, n, H, W)
        mean = self._mean.float().view(1, 3, 1, 1, 1).expand_as(x)
        self.metrics["pooled"].add(x, pooled)
        self.metrics["mean_colour"].add(x, mean)

    def results(self) -> dict[str, float]:
        out = {}
        for name, m in self.metrics.items():
            c = m.clip()
            out[f"{name}_psnr"], out[f"{name}_ssim"] = c["psnr"], c["ssim"]
        return out


# ---------------------------------------------------------------------------------------------
# the writer
# ---------------------------------------------------------------------------------------------
class VideoWriter:
    """An H.264 mp4 written frame chunk by frame chunk through ffmpeg's stdin (the settings of
    :func:`pvq_model.eval.video_io.write_video`: yuv420p, odd sizes padded by one)."""

    def __init__(self, path, width: int, height: int, fps: float = 25.0, crf: int = 16):
        import ffmpeg

        from pathlib import Path

        from data_prep.probe import ffmpeg_url

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
            .output(ffmpeg_url(str(self.path)), vcodec="libx264", pix_fmt="yuv420p", crf=crf, preset="medium",
                    vf="pad=ceil(iw/2)*2:ceil(ih/2)*2")
            .overwrite_output()
            .global_args("-loglevel", "error")
            .run_async(pipe_stdin=True, pipe_stderr=True)
        )
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        """(n, H, W, 3) uint8."""
        self.proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        self.frames += frames.shape[0]

    def close(self) -> None:
        from .video_io import MediaError

        self.proc.stdin.close()
        err = self.proc.stderr.read().decode(errors="replace")
        if self.proc.wait() != 0:
            raise MediaError(f"{self.path}: ffmpeg encoding failed: {err[-300:]}")


def to_uint8_frames(y: Tensor) -> np.ndarray:
    """(1, C, n, H, W) float in [-1, 1] -> (n, H, W, C) uint8 (as :func:`pvq_model.eval.video_io.to_uint8`)."""
    return ((y[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# reconstruct
# ---------------------------------------------------------------------------------------------
@dataclass
class StreamResult:
    size: tuple[int, int, int]
    """(T, H, W) of the clip."""
    fps: float
    metrics: dict | None
    """psnr, ssim, lpips (None without weights), psnr_frames; None when not measured."""
    quant: object
    """The :class:`pvq_model.quantizers.QuantizerOutput` of the whole latent."""
    encode_s: float
    decode_s: float
    baselines: dict | None = None
    max_frames_held: int = 0
    """Most input frames (uint8) buffered at once during the encode pass."""
    max_output_frames: int = 0
    """Most output frames handed over at once by the decoder (one chunk)."""


def chunk_borders(model, frames: int) -> list[int]:
    """Output frames where a temporal decode chunk's window begins or ends inside a clip of
    ``frames`` frames decoded by ``model`` (a :class:`pvq_model.vae.PVQVAE`, or its config): where a
    seam could show. Empty when the clip is decoded whole in time."""
    from ..tiling import axis_plan

    cfg = getattr(model, "cfg", model)
    inf, ft = cfg.inference, cfg.model.compression[0]
    n = -(-frames // ft)
    tiles, _ = axis_plan(n, inf.chunk_frames // ft, inf.chunk_overlap // ft, inf.decode_halo_frames // ft, ft)
    borders = set()
    for a in tiles:
        for b in (a.out, a.out + (a.crop.stop - a.crop.start)):
            if 0 < b < frames:
                borders.add(b)
    return sorted(borders)


def seam_dip(psnr_frames: list[float], borders: list[int], period: int | None = None) -> float | None:
    """Mean PSNR of the frames away from chunk borders minus that of the frames beside one (b - 1 and
    b for each border b), in dB: positive is a dip at the borders. With ``period`` (the latent's
    frames per position, ft), interior frames are only those at the same phase (index mod ``period``)
    as some border frame, so the latent's own periodic pattern does not count as a seam."""
    at = {f for b in borders for f in (b - 1, b) if 0 <= f < len(psnr_frames)}
    if not at:
        return None
    phases = {f % period for f in at} if period else None
    inner = [v for i, v in enumerate(psnr_frames) if i not in at and (phases is None or i % period in phases)]
    if not inner:
        return None
    return float(np.mean(inner) - np.mean([psnr_frames[f] for f in sorted(at)]))


@torch.no_grad()
def reconstruct_stream(model, source, *, out=None, lpips=None, metrics: bool = True, baselines: bool = False,
                       on_frames: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                       measure_frames: int | None = None, progress=None) -> StreamResult:
    """Reconstruct ``source`` (:class:`VideoFileSource` / :class:`TensorSource`) in bounded memory (see
    the module docstring). ``out``: write the reconstruction to this mp4; ``metrics``: per-frame PSNR /
    SSIM (/ LPIPS with ``lpips``) against the original; ``baselines``: also the mean-colour and pooled
    baselines; ``on_frames(t0, original_u8, recon_u8)``: each finished chunk, (n, H, W, 3) uint8;
    ``measure_frames``: only the first this many frames are real (a shard clip's padding follows):
    metrics and baselines cover them alone, as ``clip_metrics`` with a mask does."""
    for _ in range(2):  # a second time only when ffprobe's frame count was wrong
        try:
            return _reconstruct(model, source, out, lpips, metrics, baselines, on_frames, measure_frames, progress)
        except FrameCountChanged as e:
            source.frames = e.frames
    raise RuntimeError(f"{getattr(source, 'path', source)}: frame count changed between two decodes")


def _reconstruct(model, source, out, lpips, metrics, baselines, on_frames, measure_frames, progress) -> StreamResult:
    from .video_io import MediaError

    size = source.size
    if size[0] <= 0:
        raise MediaError(f"{getattr(source, 'path', 'clip')}: video has 0 decodable frames")
    device = next(model.parameters()).device
    real = size[0] if measure_frames is None else min(measure_frames, size[0])
    base = Baselines((real, *size[1:]), model.factor) if baselines else None
    observe = None if base is None else (
        lambda t0, raw: [base.observe(source.to_float(raw[i:i + 1])) for i in range(raw.shape[0]) if t0 + i < real])
    t_start = time.perf_counter()
    buf = FrameBuffer(source, model.grid_size(size), on_chunk=observe)
    z = model.encode_stream(lambda *w: buf.read(*w).to(device), model.grid_size(size), progress)
    buf.finish()
    quant = model.quantizer(z)
    zq = quant.quantized.to(z.dtype)
    encode_s = time.perf_counter() - t_start

    fm = FrameMetrics(lpips) if metrics else None
    originals = source.chunks() if (metrics or on_frames or base) else None
    pending: list = []  # original raw frames read but not yet compared
    writer = VideoWriter(out, size[2], size[1], source.fps) if out is not None else None
    max_out = 0

    def take(n: int):
        nonlocal pending
        have = sum(p.shape[0] for p in pending)
        while have < n:
            p = next(originals)
            pending.append(p)
            have += p.shape[0]
        raw = pending[0] if len(pending) == 1 else (
            np.concatenate(pending) if isinstance(pending[0], np.ndarray) else torch.cat(pending))
        pending = [raw[n:]] if raw.shape[0] > n else []
        return raw[:n]

    def emit(t0: int, y: Tensor) -> None:  # y (1, C, n, H, W): output frames [t0, t0 + n)
        nonlocal max_out
        max_out = max(max_out, y.shape[2])
        rec = to_uint8_frames(y) if (writer is not None or on_frames is not None) else None
        if writer is not None:
            writer.write(rec)
        if originals is None:
            return
        raw = take(y.shape[2])
        for i in range(min(y.shape[2], real - t0)):  # frame by frame: a float 4K frame is 100 MB
            x = source.to_float(raw[i:i + 1]).to(y.device)
            if fm is not None:
                fm.add(x, y[:, :, i:i + 1])
            if base is not None:
                base.compare(t0 + i, x.cpu())
        if on_frames is not None:
            orig = raw if isinstance(raw, np.ndarray) else to_uint8_frames(source.to_float(raw))
            on_frames(t0, orig, rec)

    t_dec = time.perf_counter()
    try:
        model.decode_stream(zq, emit, size, progress)
    finally:
        if writer is not None:
            writer.close()
        if originals is not None:
            originals.close()
    return StreamResult(size=size, fps=source.fps, metrics=fm.clip() if fm is not None else None, quant=quant,
                        encode_s=encode_s, decode_s=time.perf_counter() - t_dec,
                        baselines=base.results() if base is not None else None,
                        max_frames_held=buf.max_frames_held, max_output_frames=max_out)
