"""The results of an evaluation: per-clip rows aggregated into a summary, the results files, the
score models are ranked by, the MLflow metric names and a plain-text table.

A summary (``summary.json``) holds ``overall`` / ``images`` / ``videos`` aggregates (mean PSNR, SSIM,
LPIPS over clips; LPIPS ``None`` when not measured, never 0), ``by_bucket``, ``by_frames``, the
``baselines`` measured on the same clips with the model's margin over each, ``codebook`` usage and
perplexity per quantizer level, and ``timing``. Rows (``clips.parquet``) are one per clip.

Importing it loads no torch (:class:`CodebookCounter` imports it when it counts).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

SUMMARY_FILE = "summary.json"
CLIPS_FILE = "clips.parquet"
METRICS = ("psnr", "ssim", "lpips")


class EvaluationError(RuntimeError):
    """The model or the data cannot be evaluated; the message names what is wrong and the fix."""


BASELINES = ("mean_colour", "pooled")
"""The information-equivalent baselines measured on every evaluated clip (:mod:`pvq_model.eval.naive`)."""


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
        self.counts: list = []
        """Per level: a 1-D int64 tensor of code counts."""

    def add(self, indices) -> None:
        """Count the codes of one clip: ``indices`` is an integer tensor, or a list of them (one per level)."""
        import torch

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


def load_eval(eval_dir: str | Path) -> tuple[dict, list[dict]]:
    """(summary, rows) of an evaluation directory, rows sorted by key."""
    import pyarrow.parquet as pq

    d = Path(eval_dir)
    if not (d / SUMMARY_FILE).is_file():
        raise FileNotFoundError(f"{d}: no {SUMMARY_FILE}; run `pvq eval --out {d}` first")
    summary = json.loads((d / SUMMARY_FILE).read_text())
    rows = pq.read_table(d / CLIPS_FILE).to_pylist() if (d / CLIPS_FILE).is_file() else []
    return summary, sorted(rows, key=lambda r: r["key"])


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

