"""Evaluation of a trained model on the validation shards or on a folder of videos/images.

``evaluate(model, data, out)`` reconstructs every clip once (tiled inference at native size, streamed
by :mod:`pvq_model.eval.stream`: a folder's files are decoded from ffmpeg chunk by chunk and no clip or
reconstruction is ever held whole in float),
computes PSNR / SSIM / LPIPS per clip and per frame (``pvq_model.metrics``), and aggregates them

* separately for images (1-frame clips; the paper's COCO-Val column) and videos (WebVid-Val),
* per resolution bucket ("WxH") and per frame count,

plus codebook usage and perplexity per quantizer level over the whole set, encode/decode time and
peak memory (:mod:`pvq_model.eval.summary`). Results: ``out/clips.parquet`` (one row per clip,
per-frame PSNR as a list column) and ``out/summary.json``. LPIPS is ``None`` (absent, never 0) when no LPIPS weights are configured.

The same model and data give identical numbers: samples are read in a fixed order (sorted keys),
the model runs in eval mode with a fixed seed, and nothing is sampled.

``model`` is a directory written by ``PVQVAE.save_pretrained`` / the training export, or an MLflow
model URI (``models:/pvq-vae@champion``, ``models:/pvq-vae/3``, ``runs:/RUN_ID/export``), which is
downloaded with ``tracking_uri`` or the environment's ``MLFLOW_TRACKING_URI``
(:mod:`pvq_model.eval.models`).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pvq_common.media import IMAGE_EXT, VIDEO_EXT

from ..metrics import clip_metrics
from ..perceptual import build_lpips
from ..vae import PVQVAE
from .models import load_model
from .summary import (CLIPS_FILE, SUMMARY_FILE, EvaluationError, CodebookCounter, aggregate, baseline_summary,
                      format_summary, group, primary_score, write_results)


@dataclass
class EvalResult:
    summary: dict
    rows: list[dict] = field(default_factory=list)
    out: Path | None = None

    @property
    def score(self) -> float:
        return primary_score(self.summary)


# ---------------------------------------------------------------------------------------------
# data: shards (every sample of a split once, at its own size and length) or a folder
# ---------------------------------------------------------------------------------------------
@dataclass
class Clip:
    key: str
    kind: str
    """"image" (one frame) or "video"."""
    bucket: str
    """"WxH" of the clip."""
    data: torch.Tensor | None
    """(1, C, T, H, W) in [-1, 1]; frames after the last real one are zero. ``None`` for a file that
    is streamed (:attr:`source`) rather than held in memory."""
    mask: torch.Tensor
    """(1, T) bool, True on real frames."""
    source: object = None
    """For a folder clip: the :class:`pvq_model.eval.stream.VideoFileSource` it streams from."""

    @property
    def frames(self) -> int:
        return int(self.mask.sum())

    @property
    def video(self) -> torch.Tensor:
        """The clip as one tensor (decoded on demand for a streamed file: small clips only)."""
        if self.data is not None:
            return self.data
        from .video_io import read_video, to_tensor

        frames, _ = read_video(self.source.path, self.source.max_frames)
        return to_tensor(frames)

    def stream_source(self):
        """What :func:`pvq_model.eval.stream.reconstruct_stream` reads: the file, or the tensor."""
        from .stream import TensorSource

        return self.source if self.source is not None else TensorSource(self.data)


def is_shard_dataset(data: str) -> bool:
    from data_prep import storage

    return storage.exists(storage.join(str(data), "LATEST"))


def iter_shard_clips(dataset: str, split: str = "val", version: str | None = None,
                     limit: int | None = None) -> Iterator[Clip]:
    """Every sample of ``split`` in a shard dataset, sorted by key (:func:`data_prep.loader.split_samples`);
    videos at their clip length (real frames masked), images as one-frame clips."""
    from data_prep.loader import split_samples

    try:
        samples = split_samples(str(dataset), split, version, limit)
    except ValueError as e:
        raise EvaluationError(f"{e} to evaluate on") from None
    for s in samples:
        x = s.video  # (C, T, H, W)
        yield Clip(s.key, "image" if s.is_image else "video", f"{x.shape[3]}x{x.shape[2]}", x[None], s.mask[None])


def iter_folder_clips(folder: str | Path, max_frames: int | None = None, limit: int | None = None) -> Iterator[Clip]:
    """Every video/image file under ``folder`` (sorted paths), at native size, streamed from the file
    (``Clip.source``; only the probe runs here)."""
    from .stream import VideoFileSource

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXT | IMAGE_EXT)
    if not files:
        raise EvaluationError(f"{folder}: no videos ({', '.join(sorted(VIDEO_EXT))}) or images "
                              f"({', '.join(sorted(IMAGE_EXT))}) found")
    for n, p in enumerate(files):
        if limit is not None and n >= limit:
            return
        src = VideoFileSource(p, 1 if p.suffix.lower() in IMAGE_EXT else max_frames)
        kind = "image" if src.frames == 1 else "video"
        yield Clip(str(p.relative_to(folder)), kind, f"{src.width}x{src.height}", None,
                   torch.ones(1, src.frames, dtype=torch.bool), source=src)


def iter_clips(data: str | Path, split: str = "val", version: str | None = None, max_frames: int | None = None,
               limit: int | None = None) -> Iterator[Clip]:
    data = str(data)
    if is_shard_dataset(data):
        return iter_shard_clips(data, split, version, limit)
    if Path(data).is_dir():
        return iter_folder_clips(data, max_frames, limit)
    raise EvaluationError(f"{data}: neither a shard dataset (no LATEST file; run `pvq data shard`) "
                          f"nor a folder of videos/images")


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


@torch.no_grad()
def evaluate_model(model: PVQVAE, clips: Iterator[Clip], *, tiled: bool = True, lpips=None,
                   device: str | torch.device = "cpu", seed: int = 0) -> tuple[list[dict], dict]:
    """Reconstruct each clip and measure it; returns (rows, summary without provenance)."""
    torch.manual_seed(seed)
    model = model.to(device).eval()
    counter = CodebookCounter(model.quantizer.codebook_size)
    rows: list[dict] = []
    enc_s = dec_s = 0.0
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for clip in clips:
        if tiled:  # streamed: the clip is never whole in float, the output never whole at all
            from .stream import reconstruct_stream

            res = reconstruct_stream(model, clip.stream_source(), lpips=lpips, baselines=True,
                                     measure_frames=clip.frames)
            m, quant, length = res.metrics, res.quant, res.size[0]
            enc, dec = res.encode_s, res.decode_s
            base = res.baselines
        else:
            x, mask = clip.video.to(device), clip.mask.to(device)  # (1, C, T, H, W), (1, T)
            size = tuple(x.shape[2:])
            t0 = time.perf_counter()
            z = model.encode(x)
            quant = model.quantizer(z)
            t1 = time.perf_counter()
            recon = model.decode(quant.quantized.to(z.dtype), size)
            enc, dec = t1 - t0, time.perf_counter() - t1
            cm = clip_metrics(x, recon, mask, lpips)
            m = {"psnr": cm.psnr[0], "ssim": cm.ssim[0], "lpips": cm.lpips[0] if cm.lpips is not None else None,
                 "psnr_frames": cm.psnr_frames[0]}
            length, base = int(x.shape[2]), baseline_metrics(x, mask, model.factor)
        enc_s, dec_s = enc_s + enc, dec_s + dec
        counter.add(quant.indices)
        rows.append({"key": clip.key, "kind": clip.kind, "bucket": clip.bucket, "frames": clip.frames,
                     "length": length, "psnr": m["psnr"], "ssim": m["ssim"], "lpips": m["lpips"],
                     "psnr_frames": m["psnr_frames"], "encode_s": enc, "decode_s": dec, **base})
    if not rows:
        raise EvaluationError("no clips to evaluate")
    summary = {
        "overall": aggregate(rows),
        "baselines": baseline_summary(rows, model.factor),
        "images": aggregate([r for r in rows if r["kind"] == "image"]),
        "videos": aggregate([r for r in rows if r["kind"] == "video"]),
        "by_bucket": group(rows, "bucket"),
        "by_frames": group(rows, "frames"),
        "codebook": counter.summary(),
        "lpips_available": lpips is not None,
        "timing": {"encode_s": enc_s, "decode_s": dec_s,
                   "peak_memory_mb": (torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mb()),
                   "peak_memory_kind": "cuda_allocated" if cuda else "process_max_rss"},
    }
    return rows, summary


def baseline_metrics(x: torch.Tensor, mask: torch.Tensor, factor: tuple[int, int, int]) -> dict[str, float]:
    """PSNR / SSIM of the mean-colour and pooled baselines of one clip ``x`` (1, C, T, H, W)."""
    from .naive import mean_colour, pooled

    out = {}
    for name, y in (("mean_colour", mean_colour(x, mask)), ("pooled", pooled(x, factor, mask))):
        m = clip_metrics(x, y, mask)
        out[f"{name}_psnr"], out[f"{name}_ssim"] = m.psnr[0], m.ssim[0]
    return out


def evaluate(model: str | Path, data: str | Path, out: str | Path | None = None, *, split: str = "val",
             version: str | None = None, tiled: bool = True, max_frames: int | None = None,
             limit: int | None = None, tracking_uri: str | None = None, device: str = "cpu") -> EvalResult:
    """Evaluate ``model`` (directory or MLflow URI) on ``data`` (shard dataset or folder); writes
    results under ``out`` when given. See the module docstring."""
    from data_prep import manifest

    vae, path = load_model(model, tracking_uri)
    data_version = None
    if is_shard_dataset(str(data)):
        data_version = version or manifest.latest_version(str(data))
    lpips = build_lpips(vae.cfg.lpips, device)
    rows, summary = evaluate_model(vae, iter_clips(data, split, data_version, max_frames, limit), tiled=tiled,
                                   lpips=lpips, device=device)
    summary = {"model": str(model), "model_dir": str(path), "data": str(data), "split": split,
               "data_version": data_version, "tiled": tiled, **summary}
    if out is not None:
        write_results(rows, summary, out)
    return EvalResult(summary, rows, Path(out) if out is not None else None)


# ---------------------------------------------------------------------------------------------
# the body of `pvq eval` (flows.cli declares its options)
# ---------------------------------------------------------------------------------------------
def eval_command(
    model: str,
    data: str,
    out: Path | None = None,
    split: str = "val",
    version: str | None = None,
    untiled: bool = False,
    max_frames: int = 0,
    limit: int = 0,
) -> int:
    """Run :func:`evaluate`, print the table; returns an exit code (2 for a bad model/data)."""
    try:
        res = evaluate(model, data, out, split=split, version=version, tiled=not untiled,
                       max_frames=max_frames or None, limit=limit or None)
    except (EvaluationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(res.summary))
    if out is not None:
        print(f"results: {Path(out) / CLIPS_FILE}, {Path(out) / SUMMARY_FILE}")
    return 0
