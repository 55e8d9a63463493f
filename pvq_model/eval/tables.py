"""The paper's Table-1 layout, written once for the report and the ablation: method labels, metric
cells (value, "mean ± std" over seeds, "absent", "n/a"), baseline rows and markdown.

Rows are lists of strings, header first; :func:`markdown_table` renders them, the report's template
renders the same rows as HTML. Importing it loads no torch (the labels' registry is read on use).
"""

from __future__ import annotations

import statistics
from pathlib import Path

def method_name(quantizer: str, fft: bool = True, dwt: bool = True) -> str:
    """"PVQ", "RVQ + LFQ", "PVQ w/o FFT", "PVQ w/o FFT, DWT" ... from the quantizer type (its class's
    ``label`` in :data:`pvq_model.quantizers.QUANTIZERS`) and which spectral branches the encoder has."""
    from ..quantizers import QUANTIZERS

    q = QUANTIZERS.get(quantizer)
    name = q.label if q is not None else str(quantizer).upper()
    off = [b for b, on in (("FFT", fft), ("DWT", dwt)) if not on]
    return f"{name} w/o {', '.join(off)}" if off else name


def method_label(cfg) -> str:
    """:func:`method_name` of a resolved config (:class:`pvq_model.config.PVQConfig`)."""
    return method_name(cfg.quantizer.type, cfg.model.encoder.fft, cfg.model.encoder.dwt)


def method_info(summary: dict) -> dict:
    """Method, codebook size and dim of an evaluation summary: a peer baseline's own
    ``method_info``, else from the evaluated model's ``config.yaml`` (when it is local)."""
    import yaml

    if summary.get("method_info"):  # a peer baseline (pvq_model.eval.baselines) names itself
        return dict(summary["method_info"])
    cfg_file = Path(summary.get("model_dir") or "") / "config.yaml"
    if not cfg_file.is_file():
        return {"method": Path(str(summary.get("model", "?"))).name, "codebook_size": "?", "dim": "?"}
    cfg = yaml.safe_load(cfg_file.read_text())
    q, enc = cfg.get("quantizer", {}), cfg.get("model", {}).get("encoder", {})
    return {"method": method_name(q.get("type"), enc.get("fft") is not False, enc.get("dwt") is not False),
            "codebook_size": q.get("codebook_size", "?"), "dim": q.get("dim", "?")}


TABLE1_COLUMNS = ("Img PSNR", "Img SSIM", "Img LPIPS", "Vid PSNR", "Vid SSIM", "Vid LPIPS")
TABLE1_CELLS = (("images", "psnr", 2), ("images", "ssim", 4), ("images", "lpips", 4),
                ("videos", "psnr", 2), ("videos", "ssim", 4), ("videos", "lpips", 4))
"""The Table-1 metric columns: (summary part, metric, decimals); images are the COCO-Val column,
videos the WebVid-Val one."""


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation with ddof=1); the std is None for a single value."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def metric_cell(parts: list[dict], metric: str, digits: int) -> str:
    """One table cell from the same part (``images``, ``videos``, ``overall``) of one or more
    evaluations of one method (several: one per seed): "n/a" when none has clips of this kind,
    "absent" when the metric was not measured (LPIPS without weights; never shown as 0), the value
    for one evaluation, "mean ± std" (sample std, ddof=1) for several."""
    parts = [p for p in parts if p and p.get("clips")]
    if not parts:
        return "n/a"
    values = [p.get(metric) for p in parts]
    if any(v is None for v in values):
        return "absent"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def metric_cells(summaries: list[dict]) -> list[str]:
    """The six Table-1 metric cells of one or more evaluations (or baseline entries) of one method."""
    return [metric_cell([s.get(part, {}) for s in summaries], m, d) for part, m, d in TABLE1_CELLS]


def baseline_label(name: str, baseline: dict) -> str:
    """"mean colour (same clips)", "pooled 16x32x32 (same clips)": a baseline of
    :func:`pvq_model.eval.summary.baseline_summary`, measured on the clips the model was evaluated on."""
    block = baseline.get("block")
    size = f" {'x'.join(str(n) for n in block)}" if block else ""
    return f"{name.replace('_', ' ')}{size} (same clips)"


def table1_header(last: str, *, seeds: bool = False) -> list[str]:
    """The Table-1 header: method, codebook size, dim, (seeds,) the six metric columns, ``last``."""
    return ["Method", "Codebook size", "Dim", *(["Seeds"] if seeds else []), *TABLE1_COLUMNS, last]


def table1_row(name: str, codebook_size, dim, summaries: list[dict], last: str, *,
               seeds: str | None = None) -> list[str]:
    """One Table-1 row: the metric cells of ``summaries`` (one evaluation, or one per seed; see
    :func:`metric_cell`), ``seeds`` when the table has that column, and the ``last`` cell."""
    return [name, str(codebook_size), str(dim), *([seeds] if seeds is not None else []),
            *metric_cells(summaries), last]


def metrics_table(summaries: list[dict], names: list[str] | None = None) -> list[list[str]]:
    """Rows of the Table-1 layout (header first), one per evaluation, each followed by a row per
    baseline in its summary (``summary["baselines"]``, absent in older summaries) with the
    baseline's PSNR / SSIM on the same clips, LPIPS "absent" and the model's margin over it
    (overall PSNR, model minus baseline) in the last column."""
    rows = [table1_header("Margin (dB)")]
    for i, s in enumerate(summaries):
        info = method_info(s)
        name = names[i] if names and i < len(names) else info["method"]
        rows.append(table1_row(name, info["codebook_size"], info["dim"], [s], ""))
        for b_name, b in s.get("baselines", {}).items():
            margin = b.get("margin_db")
            rows.append(table1_row(baseline_label(b_name, b), "-", "-", [b],
                                   "n/a" if margin is None else f"{margin:+.2f}"))
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    """A markdown table from rows (header first); the first column left-aligned, the rest right."""
    out = ["| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 1)]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out) + "\n"



