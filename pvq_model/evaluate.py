"""Evaluation of a trained model on the validation shards or on a folder of videos/images.

``evaluate(model, data, out)`` reconstructs every clip once (tiled inference at native size, streamed
by :mod:`pvq_model.stream`: a folder's files are decoded from ffmpeg chunk by chunk and no clip or
reconstruction is ever held whole in float),
computes PSNR / SSIM / LPIPS per clip and per frame (``pvq_model.metrics``), and aggregates them

* separately for images (1-frame clips; the paper's COCO-Val column) and videos (WebVid-Val),
* per resolution bucket ("WxH") and per frame count,

plus codebook usage and perplexity per quantizer level over the whole set, encode/decode time and
peak memory. Results: ``out/clips.parquet`` (one row per clip, per-frame PSNR as a list column) and
``out/summary.json``. LPIPS is ``None`` (absent, never 0) when no LPIPS weights are configured.

The same model and data give identical numbers: samples are read in a fixed order (sorted keys),
the model runs in eval mode with a fixed seed, and nothing is sampled.

``model`` is a directory written by ``PVQVAE.save_pretrained`` / the training export, or an MLflow
model URI (``models:/pvq-vae@champion``, ``models:/pvq-vae/3``, ``runs:/RUN_ID/export``), which is
downloaded with the tracking URI of the environment (``MLFLOW_TRACKING_URI``) or ``tracking_uri``.
"""

from __future__ import annotations

import io
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .metrics import clip_metrics
from .perceptual import build_lpips
from .vae import CONFIG_FILE, WEIGHTS_FILE, PVQVAE

VIDEO_EXT = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SUMMARY_FILE = "summary.json"
CLIPS_FILE = "clips.parquet"
METRICS = ("psnr", "ssim", "lpips")


class EvaluationError(RuntimeError):
    """The model or the data cannot be evaluated; the message names what is wrong and the fix."""


@dataclass
class EvalResult:
    summary: dict
    rows: list[dict] = field(default_factory=list)
    out: Path | None = None

    @property
    def score(self) -> float:
        return primary_score(self.summary)


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
def is_mlflow_uri(model: str) -> bool:
    return str(model).startswith(("models:/", "runs:/", "mlflow-artifacts:/"))


def _find_export(root: Path) -> Path:
    for d in [root, *sorted(p.parent for p in root.rglob(WEIGHTS_FILE))]:
        if (d / WEIGHTS_FILE).is_file() and (d / CONFIG_FILE).is_file():
            return d
    raise EvaluationError(f"{root}: no {WEIGHTS_FILE} + {CONFIG_FILE} found in the downloaded model")


def resolve_model(model: str | Path, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A local model directory for ``model`` (a directory, or an MLflow URI downloaded first)."""
    if not is_mlflow_uri(str(model)):
        path = Path(model)
        if not (path / WEIGHTS_FILE).is_file():
            raise EvaluationError(f"{path}: not a model directory (no {WEIGHTS_FILE}); give the training "
                                  f"export (RUN/export) or an MLflow URI like models:/pvq-vae@champion")
        return path
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow.exceptions import MlflowException

    # the tracking URI is passed, never set globally: mlflow.set_tracking_uri also sets the
    # MLFLOW_TRACKING_URI environment variable, which would redirect every later run in the process
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:  # MLflow's own default would create ./mlflow.db in the current directory
        raise EvaluationError(f"{model}: no MLflow tracking URI; set MLFLOW_TRACKING_URI or pass tracking_uri")
    dst = Path(cache_dir or tempfile.mkdtemp(prefix="pvq-model-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        source = _registry_source(str(model), uri) if str(model).startswith("models:/") else str(model)
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=uri)
    except MlflowException as e:
        raise EvaluationError(f"{model}: cannot load from MLflow ({uri}): {e.message.splitlines()[0]}") from None
    return _find_export(Path(local))


def _registry_source(model_uri: str, tracking_uri: str) -> str:
    """The artifact URI behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, resolved with an
    explicit client (the registry is the tracking store)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ref = model_uri.removeprefix("models:/").strip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, _, version = ref.partition("/")
    return client.get_model_version_download_uri(name, str(version))


def load_model(model: str | Path, tracking_uri: str | None = None) -> tuple[PVQVAE, str]:
    """The model in eval mode and where it came from (an MLflow download is removed after loading)."""
    if not is_mlflow_uri(str(model)):
        path = resolve_model(model)
        return PVQVAE.from_pretrained(path), str(path)
    with tempfile.TemporaryDirectory(prefix="pvq-model-") as tmp:
        path = resolve_model(model, tracking_uri, tmp)
        return PVQVAE.from_pretrained(path), str(model)


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
    """For a folder clip: the :class:`pvq_model.stream.VideoFileSource` it streams from."""

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
        """What :func:`pvq_model.stream.reconstruct_stream` reads: the file, or the tensor."""
        from .stream import TensorSource

        return self.source if self.source is not None else TensorSource(self.data)


def is_shard_dataset(data: str) -> bool:
    from data_prep import storage

    return storage.exists(storage.join(str(data), "LATEST"))


def iter_shard_clips(dataset: str, split: str = "val", version: str | None = None,
                     limit: int | None = None) -> Iterator[Clip]:
    """Every sample of ``split`` in a shard dataset, sorted by key; videos at their clip length
    (real frames masked), images as one-frame clips."""
    import webdataset as wds

    from data_prep import manifest, storage
    from data_prep.loader import decode_sample

    info = manifest.read_version(str(dataset), version)
    shards = sorted(s["shard"] for s in info["shards"] if s["split"] == split and s["count"] > 0)
    if not shards:
        raise EvaluationError(f"{dataset} ({info['version']}): no {split} shards to evaluate on")
    samples = []
    for shard in shards:
        url = storage.join(str(dataset), shard)
        with storage.open_read(url) as f:
            files = wds.tariterators.tar_file_expander([{"url": url, "stream": f}])
            samples.extend(wds.tariterators.group_by_keys(files))
    samples.sort(key=lambda s: s["__key__"])
    for n, s in enumerate(samples):
        if limit is not None and n >= limit:
            return
        meta = json.loads(s["json"])
        image = meta["kind"] == "image" or meta["frames"] == 1
        x, mask = decode_sample(s, 1 if image else int(meta["length"]))
        yield Clip(s["__key__"], "image" if image else "video", f"{x.shape[3]}x{x.shape[2]}", x[None], mask[None])


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
# aggregation
# ---------------------------------------------------------------------------------------------
def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def aggregate(rows: list[dict]) -> dict:
    """Mean PSNR/SSIM/LPIPS over clips (each clip counts once) and the number of clips and frames;
    ``lpips`` is None when no row has it."""
    out = {"clips": len(rows), "frames": int(sum(r["frames"] for r in rows))}
    for m in METRICS:
        out[m] = _mean([r[m] for r in rows]) if rows else None
    return out


def group(rows: list[dict], key: str) -> dict[str, dict]:
    keys = sorted({str(r[key]) for r in rows}, key=lambda k: (len(k), k))
    return {k: aggregate([r for r in rows if str(r[key]) == k]) for k in keys}


class CodebookCounter:
    """Code histograms per quantizer level, accumulated over the evaluation set."""

    def __init__(self, codebook_size: int):
        self.size = codebook_size
        self.counts: list[torch.Tensor] = []

    def add(self, indices) -> None:
        if self.size == 0:  # a continuous bottleneck (identity) has no codebook to count
            return
        levels = indices if isinstance(indices, (list, tuple)) else [indices]
        for i, idx in enumerate(levels):
            flat = idx.reshape(-1).long().cpu()
            size = max(self.size, int(flat.max()) + 1 if flat.numel() else 0)
            c = torch.bincount(flat, minlength=size)
            if i == len(self.counts):
                self.counts.append(c)
            else:
                prev = self.counts[i]
                n = max(len(prev), len(c))
                self.counts[i] = torch.nn.functional.pad(prev, (0, n - len(prev))) + \
                    torch.nn.functional.pad(c, (0, n - len(c)))

    def summary(self) -> dict[str, dict]:
        out = {}
        for i, c in enumerate(self.counts):
            total = int(c.sum())
            p = c.double() / max(total, 1)
            entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
            out[f"level{i}"] = {"tokens": total, "codes_used": int((c > 0).sum()), "codebook_size": int(len(c)),
                                "usage": float((c > 0).sum()) / len(c), "perplexity": math.exp(entropy)}
        return out


def primary_score(summary: dict) -> float:
    """The number models are ranked by: mean PSNR over all clips (images and videos)."""
    v = summary.get("overall", {}).get("psnr")
    if v is None:
        raise EvaluationError("summary has no overall PSNR (no clips evaluated)")
    return float(v)


def flat_metrics(summary: dict, prefix: str = "eval") -> dict[str, float]:
    """MLflow-friendly metrics: eval/overall/psnr, eval/videos/ssim, eval/bucket/96x64/psnr, ...
    (absent values such as LPIPS without weights are left out, never logged as 0)."""
    out: dict[str, float] = {}
    for part in ("overall", "images", "videos"):
        for m in (*METRICS, "clips"):
            v = summary.get(part, {}).get(m)
            if v is not None:
                out[f"{prefix}/{part}/{m}"] = float(v)
    for name, grouping in (("bucket", "by_bucket"), ("frames", "by_frames")):
        for k, agg in summary.get(grouping, {}).items():
            for m in METRICS:
                if agg.get(m) is not None:
                    out[f"{prefix}/{name}/{k}/{m}"] = float(agg[m])
    for name, b in summary.get("baselines", {}).items():
        for part in ("overall", "images", "videos"):
            for m in ("psnr", "ssim"):
                if b.get(part, {}).get(m) is not None:
                    out[f"{prefix}/baseline/{name}/{part}/{m}"] = float(b[part][m])
        if b.get("margin_db") is not None:
            out[f"{prefix}/margin_db/{name}"] = float(b["margin_db"])
    for level, st in summary.get("codebook", {}).items():
        out[f"{prefix}/codebook/{level}/usage"] = float(st["usage"])
        out[f"{prefix}/codebook/{level}/perplexity"] = float(st["perplexity"])
    return out


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


BASELINES = ("mean_colour", "pooled")
"""The information-equivalent baselines measured on every evaluated clip (pvq_model.naive)."""


def baseline_metrics(x: torch.Tensor, mask: torch.Tensor, factor: tuple[int, int, int]) -> dict[str, float]:
    """PSNR / SSIM of the mean-colour and pooled baselines of one clip ``x`` (1, C, T, H, W)."""
    from .naive import mean_colour, pooled

    out = {}
    for name, y in (("mean_colour", mean_colour(x, mask)), ("pooled", pooled(x, factor, mask))):
        m = clip_metrics(x, y, mask)
        out[f"{name}_psnr"], out[f"{name}_ssim"] = m.psnr[0], m.ssim[0]
    return out


def baseline_summary(rows: list[dict], factor: tuple[int, int, int]) -> dict[str, dict]:
    """Mean PSNR / SSIM of each baseline over all clips, images and videos (as ``overall``), and the
    model's margin over it in dB."""
    out = {}
    for name in BASELINES:
        entry: dict = {"block": list(factor) if name == "pooled" else None}
        for part, sel in (("overall", rows), ("images", [r for r in rows if r["kind"] == "image"]),
                          ("videos", [r for r in rows if r["kind"] == "video"])):
            entry[part] = {"clips": len(sel), "psnr": _mean([r[f"{name}_psnr"] for r in sel]),
                           "ssim": _mean([r[f"{name}_ssim"] for r in sel])}
        model, base = _mean([r["psnr"] for r in rows]), entry["overall"]["psnr"]
        entry["margin_db"] = None if model is None or base is None else model - base
        out[name] = entry
    return out


def write_results(rows: list[dict], summary: dict, out: str | Path) -> Path:
    """``out/clips.parquet`` and ``out/summary.json`` (written to temporary names, then renamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("key", pa.string()), ("kind", pa.string()), ("bucket", pa.string()),
                        ("frames", pa.int64()), ("length", pa.int64()), ("psnr", pa.float64()),
                        ("ssim", pa.float64()), ("lpips", pa.float64()), ("psnr_frames", pa.list_(pa.float64())),
                        ("encode_s", pa.float64()), ("decode_s", pa.float64()),
                        *[(f"{b}_{m}", pa.float64()) for b in BASELINES for m in ("psnr", "ssim")]])
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    (out / (CLIPS_FILE + ".tmp")).write_bytes(buf.getvalue())
    (out / (CLIPS_FILE + ".tmp")).rename(out / CLIPS_FILE)
    (out / (SUMMARY_FILE + ".tmp")).write_text(json.dumps(summary, indent=2, sort_keys=True))
    (out / (SUMMARY_FILE + ".tmp")).rename(out / SUMMARY_FILE)
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


def format_summary(summary: dict) -> str:
    """A short plain-text table (images / videos / per bucket / per frame count, codebook)."""
    def f(v, d=2):
        return "absent" if v is None else f"{v:.{d}f}"

    lines = [f"model {summary.get('model')}  data {summary.get('data')} ({summary.get('data_version') or 'folder'})",
             f"{'group':<22}{'clips':>6}{'PSNR':>9}{'SSIM':>9}{'LPIPS':>9}"]
    parts = [("all", summary["overall"]), ("images (COCO-Val)", summary["images"]),
             ("videos (WebVid-Val)", summary["videos"])]
    parts += [(f"bucket {k}", v) for k, v in summary["by_bucket"].items()]
    parts += [(f"frames {k}", v) for k, v in summary["by_frames"].items()]
    for name, a in parts:
        lines.append(f"{name:<22}{a['clips']:>6}{f(a['psnr']):>9}{f(a['ssim'], 4):>9}{f(a['lpips'], 4):>9}")
    for name, b in summary.get("baselines", {}).items():
        a = b["overall"]
        margin = "" if b.get("margin_db") is None else f"   model {b['margin_db']:+.2f} dB"
        lines.append(f"{'baseline ' + name:<22}{a['clips']:>6}{f(a['psnr']):>9}{f(a['ssim'], 4):>9}{'':>9}{margin}")
    for level, st in summary["codebook"].items():
        lines.append(f"codebook {level}: {st['codes_used']}/{st['codebook_size']} codes used "
                     f"({100 * st['usage']:.3f} %), perplexity {st['perplexity']:.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI (mounted by pvq_model.cli as `pvq eval`)
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


def typer_command():
    """``pvq eval``: a typer command function to register with ``app.command("eval")(...)``."""
    import typer

    def eval_(
        model: str = typer.Option(..., "--model", help="model directory or models:/name@alias"),
        data: str = typer.Option(..., "--data", help="shard dataset (pvq data shard output) or folder of videos/images"),
        out: Path = typer.Option(None, "--out", help="write clips.parquet + summary.json here"),
        split: str = typer.Option("val", help="shard split"),
        version: str = typer.Option(None, help="dataset version (default LATEST)"),
        untiled: bool = typer.Option(False, help="whole clips instead of tiles/chunks"),
        max_frames: int = typer.Option(0, help="folder videos: at most this many frames (0 = all)"),
        limit: int = typer.Option(0, help="evaluate at most this many clips (0 = all)"),
    ):
        """PSNR / SSIM / LPIPS on images and videos, per bucket and frame count; codebook usage."""
        raise typer.Exit(eval_command(model, data, out, split, version, untiled, max_frames, limit))

    return eval_
