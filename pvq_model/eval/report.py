"""A visual report of one or more evaluations: a self-contained HTML page beside its PNGs and mp4s.

``build_report(eval_dirs, out_dir, run_dir=None)`` reads the ``summary.json`` + ``clips.parquet`` that
:func:`pvq_model.eval.evaluate.evaluate` wrote, and writes under ``out_dir``:

* ``index.html`` - one page rendered from ``templates/report.html.j2`` (Jinja2, autoescaped), no
  scripts, no remote resources; every image/video is a relative link;
* ``table.md`` + the same table in the page - the paper's Table-1 layout (:mod:`pvq_model.eval.tables`:
  method, codebook size, dim,  PSNR/SSIM/LPIPS on images and videos; LPIPS "absent" when no weights are configured), one row per
  evaluation, each followed by its baselines' rows (mean colour, pooled; same clips) and the
  model's margin over each in dB;
* ``clips/<n>_frames.png`` - for a fixed set of clips of the first evaluation (the first ``clips``
  keys in sorted order, so the same clips on every run): original / reconstruction / error rows at
  ``frames`` evenly spaced frames, the error amplified ``error_gain`` times; and ``clips/<n>.mp4``,
  original and reconstruction side by side (videos only);
* ``psnr_frames.png`` - per-frame PSNR of every video clip (temporal drift, chunk seams);
* ``training.png`` - training curves (loss, reconstruction, quantizer loss, LR, codebook usage and
  perplexity per step) from the run's local MLflow store ``run_dir/mlflow.db``
  (:func:`pvq_model.eval.curves.plot_curves`, the ablation's plotter);
* ``codebook.png`` - code-frequency histograms per quantizer level over the fixed clips, with the
  usage and perplexity over the whole evaluation set from ``summary.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .curves import TRAIN_KEYS, plot_curves, plt
from .summary import load_eval
from .tables import markdown_table, metrics_table

TEMPLATE = "report.html.j2"
EXTRA_CAPTIONS = {"curves_fft_dwt": "Training curves: FFT/DWT branch ablation", "curves_all": "Training curves: all variants"}
FIGURE_CAPTIONS = {"psnr_frames": "Per-frame PSNR", "training": "Training curves (MLflow run)", "codebook": "Codebook usage"}


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
    (:func:`pvq_model.eval.stream.seam_dip`)."""
    from .stream import chunk_borders, seam_dip

    vids = [r for r in rows if r["kind"] == "video" and r.get("psnr_frames")]
    if not vids:
        return None
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(9, 3.6))
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
    pyplot.close(fig)
    return path


def _eval_config(summary: dict):
    """The evaluated model's config when it was a tiled evaluation of a local PVQ-VAE, else None."""
    cfg_file = Path(summary.get("model_dir") or "") / "config.yaml"
    if summary.get("method_info") or not summary.get("tiled", True) or not cfg_file.is_file():
        return None
    import yaml

    from ..config import ConfigError, config_from_dict

    try:
        return config_from_dict(yaml.safe_load(cfg_file.read_text()))
    except ConfigError:
        return None


def plot_training(runs: dict[str, Path], path: Path, keys: tuple[str, ...] = TRAIN_KEYS) -> Path | None:
    """Training curves per step from each run's ``mlflow.db``; one panel per logged key (the
    reconstruction loss on a log scale)."""
    return plot_curves(runs, path, keys, log_keys=("recon",))


def plot_codebook(counts: list[np.ndarray], summary: dict, path: Path) -> Path | None:
    """Per level: frequency of each used code, most frequent first (log scale), titled with the
    usage and perplexity over the whole evaluation set."""
    if not counts:
        return None
    pyplot = plt()
    fig, axes = pyplot.subplots(1, len(counts), figsize=(4 * len(counts), 3.2), squeeze=False)
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
    pyplot.close(fig)
    return path


def reconstruct_clips(summary: dict, keys: list[str], out: Path, frames: int, error_gain: float,
                      fps: float = 8.0) -> tuple[list[dict], list[np.ndarray]]:
    """Reconstruct the clips ``keys`` of the evaluated data with the evaluated model; write the
    frame grids and mp4s; return per-clip entries and code counts per level."""
    import torch

    from .evaluate import iter_clips
    from .models import load_model
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
    """Reconstruct ``clip`` with :func:`pvq_model.eval.stream.reconstruct_stream`: the side-by-side mp4 is
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
def render_page(**context) -> str:
    """``templates/report.html.j2`` rendered with ``context`` (every value HTML-escaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, keep_trailing_newline=True)
    return env.get_template(TEMPLATE).render(**context)


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

    shown = []
    for e in entries:
        gw, vw = e["grid_shape"][1], 2 * int(e["bucket"].split("x")[0])
        shown.append({**e, "grid_width": gw * max(1, min(4, 480 // gw)),
                      "video_width": min(vw * max(1, 480 // vw), 1200)})
    html = render_page(
        title=title, summary=summary, table=table, has_baselines=any(s.get("baselines") for s in summaries),
        extra_markdown=extra_markdown, error_gain=f"{error_gain:g}",
        buckets=[(k, a) for k, a in summary.get("by_bucket", {}).items() if a.get("psnr") is not None],
        extras=[(n, EXTRA_CAPTIONS.get(Path(n).stem, Path(n).stem.replace("_", " "))) for n in extras],
        entries=shown, figures=[(figures[k], cap) for k, cap in FIGURE_CAPTIONS.items() if k in figures])
    page = out / "index.html"
    page.write_text(html)
    (out / "report.json").write_text(json.dumps({"eval_dirs": [str(d) for d in eval_dirs], "clips": entries,
                                                 "figures": figures, "extra_images": extras}, indent=2))
    return page
