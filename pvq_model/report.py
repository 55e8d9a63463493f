"""A visual report of one or more evaluations: a self-contained HTML page beside its PNGs and mp4s.

``build_report(eval_dirs, out_dir, run_dir=None)`` reads the ``summary.json`` + ``clips.parquet`` that
:func:`pvq_model.evaluate.evaluate` wrote, and writes under ``out_dir``:

* ``index.html`` - one page, no scripts, no remote resources; every image/video is a relative link;
* ``table.md`` + the same table in the page - the paper's Table-1 layout (method, codebook size, dim,
  PSNR/SSIM/LPIPS on images and videos; LPIPS "absent" when no weights are configured), one row per
  evaluation, each followed by its baselines' rows (mean colour, pooled; same clips) and the
  model's margin over each in dB;
* ``clips/<n>_frames.png`` - for a fixed set of clips of the first evaluation (the first ``clips``
  keys in sorted order, so the same clips on every run): original / reconstruction / error rows at
  ``frames`` evenly spaced frames, the error amplified ``error_gain`` times; and ``clips/<n>.mp4``,
  original and reconstruction side by side (videos only);
* ``psnr_frames.png`` - per-frame PSNR of every video clip (temporal drift, chunk seams);
* ``training.png`` - training curves (loss, reconstruction, quantizer loss, LR, codebook usage and
  perplexity per step) from the run's local MLflow store ``run_dir/mlflow.db``;
* ``codebook.png`` - code-frequency histograms per quantizer level over the fixed clips, with the
  usage and perplexity over the whole evaluation set from ``summary.json``.
"""

from __future__ import annotations

import html
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np

TRAIN_KEYS = ("train/psnr", "train/ssim", "loss", "recon", "quantizer", "lr", "quant/usage", "quant/perplexity")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_eval(eval_dir: str | Path) -> tuple[dict, list[dict]]:
    """(summary, rows) of an evaluation directory, rows sorted by key."""
    import pyarrow.parquet as pq

    from .evaluate import CLIPS_FILE, SUMMARY_FILE

    d = Path(eval_dir)
    if not (d / SUMMARY_FILE).is_file():
        raise FileNotFoundError(f"{d}: no {SUMMARY_FILE}; run `pvq eval --out {d}` first")
    summary = json.loads((d / SUMMARY_FILE).read_text())
    rows = pq.read_table(d / CLIPS_FILE).to_pylist() if (d / CLIPS_FILE).is_file() else []
    return summary, sorted(rows, key=lambda r: r["key"])


def _model_info(summary: dict) -> dict:
    """Method, codebook size and dim from the evaluated model's config.yaml (when it is local)."""
    import yaml

    if summary.get("method_info"):  # a peer baseline (pvq_model.baselines) names itself
        return dict(summary["method_info"])
    cfg_file = Path(summary.get("model_dir") or "") / "config.yaml"
    if not cfg_file.is_file():
        return {"method": Path(str(summary.get("model", "?"))).name, "codebook_size": "?", "dim": "?"}
    cfg = yaml.safe_load(cfg_file.read_text())
    from .ablate import METHOD_NAMES

    q, enc = cfg.get("quantizer", {}), cfg.get("model", {}).get("encoder", {})
    method = METHOD_NAMES.get(q.get("type"), str(q.get("type")).upper())
    off = [b for b, k in (("FFT", "fft"), ("DWT", "dwt")) if enc.get(k) is False]
    return {"method": f"{method} w/o {', '.join(off)}" if off else method,
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
    :func:`pvq_model.evaluate.baseline_summary`, measured on the clips the model was evaluated on."""
    block = baseline.get("block")
    size = f" {'x'.join(str(n) for n in block)}" if block else ""
    return f"{name.replace('_', ' ')}{size} (same clips)"


def metrics_table(summaries: list[dict], names: list[str] | None = None) -> list[list[str]]:
    """Rows of the Table-1 layout (header first), one per evaluation, each followed by a row per
    baseline in its summary (``summary["baselines"]``, absent in older summaries) with the
    baseline's PSNR / SSIM on the same clips, LPIPS "absent" and the model's margin over it
    (overall PSNR, model minus baseline) in the last column."""
    rows = [["Method", "Codebook size", "Dim", *TABLE1_COLUMNS, "Margin (dB)"]]
    for i, s in enumerate(summaries):
        info = _model_info(s)
        name = names[i] if names and i < len(names) else info["method"]
        rows.append([name, str(info["codebook_size"]), str(info["dim"]), *metric_cells([s]), ""])
        for b_name, b in s.get("baselines", {}).items():
            margin = b.get("margin_db")
            rows.append([baseline_label(b_name, b), "-", "-", *metric_cells([b]),
                         "n/a" if margin is None else f"{margin:+.2f}"])
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    """A markdown table from rows (header first); the first column left-aligned, the rest right."""
    out = ["| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 1)]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def frame_grid(original: np.ndarray, recon: np.ndarray, frames: int = 4, error_gain: float = 4.0) -> np.ndarray:
    """(3*H, k*W, 3) uint8: rows original / reconstruction / |error| x gain at k evenly spaced frames.

    ``original``, ``recon``: (T, H, W, 3) uint8 (real frames only)."""
    t = original.shape[0]
    idx = np.unique(np.linspace(0, t - 1, min(frames, t)).round().astype(int))
    err = np.abs(original.astype(np.int16) - recon.astype(np.int16)).astype(np.float32) * error_gain
    err = err.clip(0, 255).astype(np.uint8)
    rows = [np.concatenate(list(a[idx]), axis=1) for a in (original, recon, err)]
    return np.concatenate(rows, axis=0)


def _save_png(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def plot_psnr_frames(rows: list[dict], path: Path, cfg=None) -> Path | None:
    """Per-frame PSNR of every video clip; with the evaluated model's config ``cfg`` (tiled
    evaluation), the temporal chunk borders as dashed lines and the mean dip at them in the title
    (:func:`pvq_model.stream.seam_dip`)."""
    from .stream import chunk_borders, seam_dip

    plt = _plt()
    vids = [r for r in rows if r["kind"] == "video" and r.get("psnr_frames")]
    if not vids:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.6))
    dips, drawn = [], set()
    for r in vids:
        vals = [v for v in r["psnr_frames"][: r["frames"]] if v is not None]
        ax.plot(range(len(vals)), vals, marker=".", label=r["key"][:40])
        if cfg is not None:
            borders = chunk_borders(cfg, len(vals))
            for b in borders:
                if b not in drawn:
                    ax.axvline(b - 0.5, color="grey", ls="--", lw=0.8)
                    drawn.add(b)
            d = seam_dip(vals, borders)
            if d is not None:
                dips.append(d)
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR (dB)")
    title = "per-frame PSNR of the video clips"
    if dips:
        title += f" (dashed: chunk borders; mean dip at them {np.mean(dips):+.3f} dB)"
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _eval_config(summary: dict):
    """The evaluated model's config when it was a tiled evaluation of a local PVQ-VAE, else None."""
    cfg_file = Path(summary.get("model_dir") or "") / "config.yaml"
    if summary.get("method_info") or not summary.get("tiled", True) or not cfg_file.is_file():
        return None
    import yaml

    from .config import ConfigError, config_from_dict

    try:
        return config_from_dict(yaml.safe_load(cfg_file.read_text()))
    except ConfigError:
        return None


def plot_training(runs: dict[str, Path], path: Path, keys: tuple[str, ...] = TRAIN_KEYS) -> Path | None:
    """Training curves per step from each run's ``mlflow.db``; one panel per logged key."""
    from .ablate import smooth, read_mlflow_metrics

    plt = _plt()
    series = {n: read_mlflow_metrics(Path(d) / "mlflow.db", keys) for n, d in runs.items()}
    series = {n: s for n, s in series.items() if s}
    present = [k for k in keys if any(k in s for s in series.values())]
    if not present:
        return None
    cols = min(3, len(present))
    nrows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, present):
        for name, s in series.items():
            if key in s:
                steps, vals = zip(*s[key])
                if key == "lr":
                    ax.plot(steps, vals, label=name, lw=1)
                else:  # moving average over ~10 % of the steps; one step is one small batch
                    ax.plot(steps, smooth(list(vals), max(1, len(vals) // 10)), label=name, lw=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key in ("recon",) and all(v > 0 for s in series.values() for _, v in s.get(key, [])):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    if len(series) > 1:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_codebook(counts: list[np.ndarray], summary: dict, path: Path) -> Path | None:
    """Per level: frequency of each used code, most frequent first (log scale), titled with the
    usage and perplexity over the whole evaluation set."""
    if not counts:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(counts), figsize=(4 * len(counts), 3.2), squeeze=False)
    stats = summary.get("codebook", {})
    for i, (ax, c) in enumerate(zip(axes[0], counts)):
        used = np.sort(c[c > 0])[::-1]
        ax.bar(np.arange(len(used)), used, width=1.0)
        ax.set_yscale("log")
        st = stats.get(f"level{i}", {})
        ax.set_title(f"level {i}: {st.get('codes_used', int((c > 0).sum()))}/{st.get('codebook_size', len(c))} "
                     f"used, ppl {st.get('perplexity', float('nan')):.1f}", fontsize=9)
        ax.set_xlabel("code rank")
        ax.set_ylabel("tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reconstruct_clips(summary: dict, keys: list[str], out: Path, frames: int, error_gain: float,
                      fps: float = 8.0) -> tuple[list[dict], list[np.ndarray]]:
    """Reconstruct the clips ``keys`` of the evaluated data with the evaluated model; write the
    frame grids and mp4s; return per-clip entries and code counts per level."""
    import torch

    from .evaluate import iter_clips, load_model
    from .video_io import to_uint8, write_video

    if summary.get("method_info"):  # a diffusers peer baseline: continuous latent, no codes
        from .baselines import load_diffusers_autoencoder, reconstruct

        peer = load_diffusers_autoencoder(summary["model_dir"])

        def run(x):
            return reconstruct(peer, x), None
    else:
        model, _ = load_model(summary["model_dir"])
        model.eval()

        def run(x):
            return model.reconstruct(x, tiled=bool(summary.get("tiled", True)))
    wanted = set(keys)
    entries, counts = [], []
    torch.manual_seed(0)
    with torch.no_grad():
        for clip in iter_clips(summary["data"], summary.get("split", "val"), summary.get("data_version")):
            if clip.key not in wanted:
                continue
            n = len(entries)
            real = clip.frames
            e = {"key": clip.key, "kind": clip.kind, "bucket": clip.bucket, "frames": real, "video": None}
            if summary.get("method_info") or not summary.get("tiled", True):
                recon, quant = run(clip.video)
                orig_u8, rec_u8 = to_uint8(clip.video)[:real], to_uint8(recon.float())[:real]
                grid = frame_grid(orig_u8, rec_u8, frames, error_gain)
                if clip.kind == "video":
                    side = np.concatenate([orig_u8, rec_u8], axis=2)
                    e["video"] = write_video(out / "clips" / f"{n:02d}.mp4", side, fps=fps).relative_to(out).as_posix()
            else:  # the streaming path of pvq eval: frames are written and picked as chunks finish
                grid, quant, e["video"] = _stream_clip(model, clip, out, n, frames, error_gain, fps)
            e["grid"] = _save_png(grid, out / "clips" / f"{n:02d}_frames.png").relative_to(out).as_posix()
            e["grid_shape"] = list(grid.shape)
            entries.append(e)
            levels = [] if quant is None else (
                quant.indices if isinstance(quant.indices, (list, tuple)) else [quant.indices])
            for i, idx in enumerate(levels):
                c = np.bincount(idx.reshape(-1).long().numpy(), minlength=1)
                if i == len(counts):
                    counts.append(c)
                else:
                    m = max(len(c), len(counts[i]))
                    counts[i] = np.pad(counts[i], (0, m - len(counts[i]))) + np.pad(c, (0, m - len(c)))
            if len(entries) == len(wanted):
                break
    return entries, counts


def _stream_clip(model, clip, out: Path, n: int, frames: int, error_gain: float, fps: float):
    """Reconstruct ``clip`` with :func:`pvq_model.stream.reconstruct_stream`: the side-by-side mp4 is
    written chunk by chunk and only the grid's frames are kept. Returns (grid, quant, mp4 path)."""
    from .stream import VideoWriter, reconstruct_stream

    real = clip.frames
    pick = set(np.unique(np.linspace(0, real - 1, min(frames, real)).round().astype(int)).tolist())
    kept_o, kept_r = [], []
    path = out / "clips" / f"{n:02d}.mp4"
    writer = None
    if clip.kind == "video":
        h, w = (int(v) for v in reversed(clip.bucket.split("x")))
        writer = VideoWriter(path, 2 * w, h, fps)

    def on_frames(t0: int, orig: np.ndarray, rec: np.ndarray) -> None:
        k = min(orig.shape[0], real - t0)
        if k <= 0:
            return
        if writer is not None:
            writer.write(np.concatenate([orig[:k], rec[:k]], axis=2))
        for i in range(k):
            if t0 + i in pick:
                kept_o.append(orig[i])
                kept_r.append(rec[i])

    try:
        res = reconstruct_stream(model, clip.stream_source(), metrics=False, on_frames=on_frames,
                                 measure_frames=real)
    finally:
        if writer is not None:
            writer.close()
    grid = frame_grid(np.stack(kept_o), np.stack(kept_r), frames, error_gain)
    return grid, res.quant, (path.relative_to(out).as_posix() if writer is not None else None)


# ---------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}img{max-width:100%;border:1px solid #ddd;image-rendering:pixelated}
.clip{margin:12px 0 24px}.meta{color:#666;font-size:90%}h2{border-bottom:1px solid #ddd;padding-bottom:4px}
video{border:1px solid #ddd;image-rendering:pixelated}"""


def _img(src: str, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}"{w}>'


def build_report(eval_dirs: str | Path | list[str | Path], out_dir: str | Path,
                 run_dir: str | Path | dict[str, str | Path] | None = None, *, names: list[str] | None = None,
                 clips: int = 4, frames: int = 4, error_gain: float = 4.0, title: str = "PVQ-VAE evaluation report",
                 extra_markdown: str | None = None, extra_images: list[str | Path] | None = None) -> Path:
    """Write ``out_dir/index.html`` and its figures (see the module docstring); returns the page.

    ``eval_dirs``: one or more ``pvq eval --out`` directories (the first one gets the clip figures);
    ``run_dir``: a training run directory (with ``mlflow.db``) or ``{name: run_dir}`` for several;
    ``names``: table row names (default: the method from each model's config)."""
    eval_dirs = [eval_dirs] if isinstance(eval_dirs, (str, Path)) else list(eval_dirs)
    if not eval_dirs:
        raise ValueError("build_report needs at least one evaluation directory")
    out = Path(out_dir)
    if (out / "clips").is_dir():
        shutil.rmtree(out / "clips")
    out.mkdir(parents=True, exist_ok=True)
    loaded = [load_eval(d) for d in eval_dirs]
    summaries = [s for s, _ in loaded]
    summary, rows = loaded[0]

    table = metrics_table(summaries, names)
    (out / "table.md").write_text(markdown_table(table))

    keys = [r["key"] for r in rows][:clips]
    entries, counts = reconstruct_clips(summary, keys, out, frames, error_gain) if keys else ([], [])
    figures = {}
    if plot_psnr_frames(rows, out / "psnr_frames.png", _eval_config(summary)):
        figures["psnr_frames"] = "psnr_frames.png"
    runs = {} if run_dir is None else (
        {str(k): Path(v) for k, v in run_dir.items()} if isinstance(run_dir, dict) else {Path(run_dir).name: Path(run_dir)})
    if runs and plot_training(runs, out / "training.png"):
        figures["training"] = "training.png"
    if plot_codebook(counts, summary, out / "codebook.png"):
        figures["codebook"] = "codebook.png"
    extras = []
    for p in extra_images or []:
        p = Path(p)
        if p.is_file():
            shutil.copyfile(p, out / p.name)
            extras.append(p.name)

    h = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
         f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
         f"<p class=\"meta\">model <code>{html.escape(str(summary.get('model')))}</code> &middot; data "
         f"<code>{html.escape(str(summary.get('data')))}</code> ({html.escape(str(summary.get('data_version') or 'folder'))}, "
         f"split {html.escape(str(summary.get('split')))}) &middot; {summary['overall']['clips']} clips, "
         f"{summary['overall']['frames']} frames &middot; LPIPS "
         f"{'configured' if summary.get('lpips_available') else 'absent (no LPIPS weights configured)'}</p>",
         "<h2>Metrics (Table-1 layout)</h2>", "<table><thead><tr>"
         + "".join(f"<th>{html.escape(c)}</th>" for c in table[0]) + "</tr></thead><tbody>"]
    h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table[1:]]
    h.append("</tbody></table>")
    if any(s.get("baselines") for s in summaries):
        h.append("<p class=\"meta\">Baseline rows: mean colour and pooled reconstructions of the same clips "
                 "(pvq_model.naive); margin: the model's overall PSNR minus the baseline's, in dB.</p>")
    if extra_markdown:
        h.append(f"<details><summary>markdown</summary><pre>{html.escape(extra_markdown)}</pre></details>")
    by = summary.get("by_bucket", {})
    if by:
        h.append("<h3>Per resolution bucket (first model)</h3><table><thead><tr><th>bucket</th><th>clips</th>"
                 "<th>PSNR</th><th>SSIM</th></tr></thead><tbody>")
        h += [f"<tr><td>{html.escape(k)}</td><td>{a['clips']}</td><td>{a['psnr']:.2f}</td><td>{a['ssim']:.4f}</td></tr>"
              for k, a in by.items() if a.get("psnr") is not None]
        h.append("</tbody></table>")
    for name in extras:
        cap = {"curves_fft_dwt": "Training curves: FFT/DWT branch ablation",
               "curves_all": "Training curves: all variants"}.get(Path(name).stem, Path(name).stem.replace("_", " "))
        h.append(f"<h2>{html.escape(cap)}</h2>{_img(name, cap)}")
    h.append(f"<h2>Clips: original / reconstruction / error &times;{error_gain:g}</h2>")
    for e in entries:
        gw = e["grid_shape"][1]
        h.append(f"<div class=\"clip\"><div class=\"meta\">{html.escape(e['key'])} &middot; {e['kind']} "
                 f"{e['bucket']} &middot; {e['frames']} frame(s)</div>"
                 f"{_img(e['grid'], e['key'], gw * max(1, min(4, 480 // gw)))}")
        if e["video"]:
            width = 2 * int(e["bucket"].split("x")[0])
            h.append(f"<div><video controls loop muted width=\"{min(width * max(1, 480 // width), 1200)}\" "
                     f"src=\"{html.escape(e['video'])}\"></video> <span class=\"meta\">original | reconstruction"
                     f" (<a href=\"{html.escape(e['video'])}\">mp4</a>)</span></div>")
        h.append("</div>")
    captions = {"psnr_frames": "Per-frame PSNR", "training": "Training curves (MLflow run)",
                "codebook": "Codebook usage"}
    for k, cap in captions.items():
        if k in figures:
            h.append(f"<h2>{cap}</h2>{_img(figures[k], cap)}")
    h.append("</body></html>\n")
    page = out / "index.html"
    page.write_text("\n".join(h))
    (out / "report.json").write_text(json.dumps({"eval_dirs": [str(d) for d in eval_dirs], "clips": entries,
                                                 "figures": figures, "extra_images": extras}, indent=2))
    return page


# ---------------------------------------------------------------------------------------------
# CLI (mount as `pvq report`)
# ---------------------------------------------------------------------------------------------
def typer_command():
    """``pvq report``: a typer command function; register with ``app.command("report")(typer_command())``."""
    import typer

    def report_(
        eval_dir: list[Path] = typer.Option(..., "--eval", help="pvq eval --out directory (repeat to compare)"),
        out: Path = typer.Option(Path("report"), "--out", help="output directory"),
        run: Path = typer.Option(None, "--run", help="training run directory (its mlflow.db gives the curves)"),
        clips: int = typer.Option(4, help="clips shown"),
        frames: int = typer.Option(4, help="frames shown per clip"),
    ):
        """A self-contained HTML page: frames, reconstructions, error maps, curves, codebook usage, table."""
        try:
            page = build_report(eval_dir, out, run, clips=clips, frames=frames)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None
        print(f"report: {page}")

    return report_



