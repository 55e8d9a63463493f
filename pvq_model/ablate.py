"""The Table-1 ablation harness: train every variant with the same data, seed and step budget,
evaluate each EMA export, and write the comparison.

``ablate(configs, data, steps, out)``

* Each ``configs/ablations/*.yaml`` is ``base: ../paper.yaml`` plus a few keys. The harness reads a
  file's *own* keys (not its base) and applies them as overrides on ``configs/debug.yaml`` (the
  CPU-sized width), so every variant differs from the others only by those keys.
* Every variant is trained in its own process (``python -m pvq_model.train``): DeepSpeed's
  process-global distributed state and the per-run MLflow store stay separate, and a crash of one
  variant is recorded in the table instead of ending the whole comparison. A variant whose
  ``result.json`` already reports the full step budget is not trained again (re-running the harness
  after an interruption only trains what is missing).
* Each EMA export is evaluated with :func:`pvq_model.evaluate.evaluate` on the ``split`` of the same
  shard dataset.

Writes ``out/ablation.md`` (the Table-1 layout: method, codebook size, dim, PSNR/SSIM/LPIPS on images
and videos; LPIPS is "absent" when no LPIPS weights are configured), ``out/ablation.json``,
``out/curves_fft_dwt.png`` (training loss and L1 reconstruction loss per step of the branch
ablations, read from each run's ``mlflow.db``), ``out/curves_all.png`` (every variant), the runs
under ``out/runs/<variant>`` and the evaluations under ``out/evals/<variant>``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEBUG_CONFIG = ROOT / "configs" / "debug.yaml"
METHOD_NAMES = {"vq": "VQ", "gvq": "GVQ", "lfq": "LFQ", "rvq": "RVQ", "psvq": "PSVQ", "rvq_lfq": "RVQ + LFQ",
                "pvq": "PVQ"}
BRANCH_VARIANTS = ("pvq", "no_fft", "no_dwt", "no_fft_dwt")
TABLE_ORDER = ("vq", "gvq", "lfq", "rvq", "psvq", "rvq_lfq", "pvq", "no_fft", "no_dwt", "no_fft_dwt")
SMALL_BUCKET_PIXELS = 128 * 128


class AblationError(RuntimeError):
    """Bad harness input (config file, data); the message names it and the fix."""


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def _flatten(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        else:
            out.append(f"{key}={json.dumps(v)}")  # JSON is YAML flow syntax: load_config parses it back
    return out


def variant_overrides(path: str | Path) -> tuple[str, list[str]]:
    """(variant name, ``key.path=value`` overrides) from an ablation file's own keys; ``base`` is
    ignored and ``name`` becomes ``name=...``. The variant name is the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise AblationError(f"ablation config not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise AblationError(f"{path}: the top level must be a mapping")
    data.pop("base", None)
    return path.stem, _flatten(data)


def expand_configs(items: list[str]) -> list[Path]:
    """Config paths from files and (quoted) glob patterns, e.g. ``configs/ablations/*.yaml``."""
    import glob

    out: list[Path] = []
    for item in items:
        hits = sorted(glob.glob(str(item))) if any(c in str(item) for c in "*?[") else [str(item)]
        out += [Path(h) for h in hits]
    return out


def method_label(cfg) -> str:
    """"PVQ", "RVQ + LFQ", "PVQ w/o FFT", "PVQ w/o FFT, DWT" ... from a resolved config."""
    name = METHOD_NAMES.get(cfg.quantizer.type, cfg.quantizer.type.upper())
    off = [b for b, on in (("FFT", cfg.model.encoder.fft), ("DWT", cfg.model.encoder.dwt)) if not on]
    return f"{name} w/o {', '.join(off)}" if off else name


def small_buckets(data: str) -> list[str]:
    """The training buckets of a shard dataset whose frames have at most 128x128 pixels (CPU-sized)."""
    from data_prep.loader import ShardLoader

    buckets = ShardLoader(str(data), split="train").buckets
    small = [b for b in buckets if int(b.split("x")[0]) * int(b.split("x")[1]) <= SMALL_BUCKET_PIXELS]
    return small or list(buckets)


# ---------------------------------------------------------------------------------------------
# training runs and their curves
# ---------------------------------------------------------------------------------------------
def train_variant(overrides: list[str], run_dir: Path, steps: int, timeout_s: float | None = None) -> dict:
    """Train one variant in a child process; returns its ``result.json`` (skips a finished run)."""
    result_file = run_dir / "result.json"
    if result_file.is_file():
        res = json.loads(result_file.read_text())
        if res.get("step") == steps and Path(res.get("export") or "").is_dir():
            return res
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pvq_model.train", "--config", str(DEBUG_CONFIG), "--out", str(run_dir)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)  # each run keeps its own sqlite store in run_dir/mlflow.db
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.run(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    if proc.returncode != 0 or not result_file.is_file():
        tail = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"training failed (exit {proc.returncode}), log {run_dir / 'train.log'}: "
                           + " | ".join(tail))
    return json.loads(result_file.read_text())


def read_mlflow_metrics(db: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, list[tuple[int, float]]]:
    """Per-step metrics of the (latest) run in a local MLflow sqlite store: ``{key: [(step, value)]}``.
    Read with sqlite3 directly (no MLflow import, nothing written)."""
    db = Path(db)
    if not db.is_file():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        run = con.execute("SELECT run_uuid FROM runs ORDER BY start_time DESC LIMIT 1").fetchone()
        if run is None:
            return {}
        rows = con.execute("SELECT key, step, value, timestamp FROM metrics WHERE run_uuid = ? "
                           "ORDER BY key, step, timestamp", (run[0],)).fetchall()
    finally:
        con.close()
    out: dict[str, dict[int, float]] = {}
    for key, step, value, _ in rows:
        if keys is None or key in keys:
            out.setdefault(key, {})[int(step)] = float(value)  # a resumed step keeps its latest value
    return {k: sorted(v.items()) for k, v in out.items()}


def smooth(values: list[float], window: int) -> list[float]:
    if window <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


CURVE_KEYS = ("train/psnr", "train/ssim", "loss")  # the paper's Fig. 1 (PSNR, SSIM) and Fig. 2 (loss)


def plot_curves(runs: dict[str, Path], path: Path, keys: tuple[str, ...] = CURVE_KEYS,
                title: str = "training curves") -> Path | None:
    """One panel per metric key, one line per run (moving average over ~10 % of the steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {name: read_mlflow_metrics(Path(d) / "mlflow.db", keys) for name, d in runs.items()}
    series = {n: s for n, s in series.items() if s}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, s in series.items():
            pts = s.get(key, [])
            if pts:
                steps, vals = zip(*pts)
                ax.plot(steps, smooth(list(vals), max(1, len(vals) // 10)), label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        if not key.startswith("train/") and all(v > 0 for s in series.values() for _, v in s.get(key, [])):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
@dataclass
class VariantResult:
    variant: str
    method: str
    codebook_size: int
    dim: int
    levels: int
    fft: bool
    dwt: bool
    steps: int = 0
    train_s: float = 0.0
    eval_s: float = 0.0
    final_loss: float | None = None
    images: dict = field(default_factory=dict)
    videos: dict = field(default_factory=dict)
    codebook: dict = field(default_factory=dict)
    run_dir: str = ""
    eval_dir: str = ""
    error: str | None = None


def _fmt(v, digits: int) -> str:
    return "absent" if v is None else f"{v:.{digits}f}"


def _cell(part: dict, metric: str, digits: int) -> str:
    if not part or not part.get("clips"):
        return "n/a"  # no clips of this kind in the evaluation split
    return _fmt(part.get(metric), digits)


def table_markdown(results: list[VariantResult], header: str = "") -> str:
    """The Table-1 layout: one row per variant; images (COCO-Val column) and videos (WebVid-Val)."""
    lines = [header] if header else []
    lines += ["| Method | Codebook size | Dim | Img PSNR | Img SSIM | Img LPIPS | Vid PSNR | Vid SSIM | Vid LPIPS |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.error:
            lines.append(f"| {r.method} | {r.codebook_size} | {r.dim} | failed: {r.error[:60]} | | | | | |")
            continue
        cells = [_cell(r.images, "psnr", 2), _cell(r.images, "ssim", 4), _cell(r.images, "lpips", 4),
                 _cell(r.videos, "psnr", 2), _cell(r.videos, "ssim", 4), _cell(r.videos, "lpips", 4)]
        lines.append(f"| {r.method} | {r.codebook_size} | {r.dim} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the harness
# ---------------------------------------------------------------------------------------------
def common_overrides(data: str, steps: int, buckets: list[str], seed: int = 42,
                     extra: list[str] | None = None) -> list[str]:
    """The overrides every variant shares: data, buckets, step budget, seed, schedule."""
    return [f"train.data_path={data}", f"train.steps={steps}", f"train.seed={seed}",
            f"train.data_buckets={json.dumps(buckets)}", f"train.checkpoint_every={steps + 1}",
            f"train.warmup_steps={max(1, min(20, steps // 10))}", *(extra or [])]


def prepare(configs: list[str | Path], data: str | Path, steps: int) -> tuple[list[Path], str]:
    """Validated inputs: configs in Table-1 order and the absolute shard dataset path."""
    from .evaluate import is_shard_dataset

    if steps < 1:
        raise AblationError(f"--steps must be >= 1, got {steps}")
    data = str(Path(data).resolve()) if "://" not in str(data) else str(data)
    if not is_shard_dataset(data):
        raise AblationError(f"{data}: not a shard dataset (no LATEST file); training needs shards: "
                            f"run `pvq data shard` first")
    rank = {v: i for i, v in enumerate(TABLE_ORDER)}
    ordered = sorted({Path(c) for c in configs}, key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    if not ordered:
        raise AblationError("no ablation configs given (e.g. --configs configs/ablations/*.yaml)")
    return ordered, data


def run_variant(config: str | Path, data: str, steps: int, out: str | Path, common: list[str], *,
                split: str = "val", limit: int | None = None, log=print) -> VariantResult:
    """Train (``out/runs/VARIANT``) and evaluate (``out/evals/VARIANT``) one ablation variant; a
    failure is recorded in ``VariantResult.error`` (one Prefect task of the ``ablate`` flow)."""
    from .config import load_config
    from .evaluate import evaluate

    out = Path(out)
    variant, own = variant_overrides(config)
    overrides = own + list(common)
    cfg = load_config(DEBUG_CONFIG, overrides)  # validates before a process is started
    q = cfg.quantizer
    r = VariantResult(variant, method_label(cfg), q.codebook_size, q.dim, q.num_levels,
                      cfg.model.encoder.fft, cfg.model.encoder.dwt, run_dir=str(out / "runs" / variant),
                      eval_dir=str(out / "evals" / variant))
    log(f"[{variant}] {r.method} / {r.codebook_size} / {r.dim}: training {steps} steps")
    try:
        t0 = time.perf_counter()
        res = train_variant(overrides, Path(r.run_dir), steps)
        r.train_s = time.perf_counter() - t0
        r.steps = int(res["step"])
        r.final_loss = float(res["losses"][-1]) if res.get("losses") else None
        t0 = time.perf_counter()
        ev = evaluate(res["export"], data, r.eval_dir, split=split, limit=limit)
        r.eval_s = time.perf_counter() - t0
        r.images, r.videos, r.codebook = ev.summary["images"], ev.summary["videos"], ev.summary["codebook"]
        log(f"[{variant}] trained in {r.train_s:.0f} s, evaluated in {r.eval_s:.0f} s: "
            f"overall PSNR {ev.summary['overall']['psnr']:.2f}")
    except Exception as e:  # one broken variant is a row of the table, not the end of the run
        r.error = f"{type(e).__name__}: {e}"
        log(f"[{variant}] failed: {r.error}")
    return r


def write_outputs(results: list[VariantResult], out: str | Path, *, steps: int, seed: int, data: str, split: str,
                  buckets: list[str], wall_s: float, report: bool = True) -> str:
    """``ablation.md``, ``ablation.json``, the curve PNGs and (``report``) ``report/index.html``;
    returns the markdown table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"Small-scale ablation (debug width, {steps} steps per variant, seed {seed}, "
              f"buckets {', '.join(buckets)}; evaluated on the {split} split of {data}). "
              f"Not the paper's scale: compare rows with each other, not with the paper.\n")
    table = table_markdown(results, header)
    runs = {r.variant: Path(r.run_dir) for r in results if not r.error}
    branch = {v: p for v, p in runs.items() if v in BRANCH_VARIANTS}
    curves = {}
    if branch and plot_curves(branch, out / "curves_fft_dwt.png", title="FFT/DWT branch ablation"):
        curves["fft_dwt"] = "curves_fft_dwt.png"
    if runs and plot_curves(runs, out / "curves_all.png", title="all variants"):
        curves["all"] = "curves_all.png"
    md = table + "".join(f"\n![{k} curves]({v})\n" for k, v in curves.items())
    md += f"\nWall time: {wall_s:.0f} s for {len(results)} variants.\n"
    (out / "ablation.md").write_text(md)
    (out / "ablation.json").write_text(json.dumps(
        {"steps": steps, "seed": seed, "data": data, "split": split, "buckets": buckets, "wall_s": wall_s,
         "curves": curves, "variants": [asdict(r) for r in results]}, indent=2))
    if report and runs:
        from .report import build_report

        order = sorted((r for r in results if not r.error), key=lambda r: r.variant != "pvq")
        build_report([Path(r.eval_dir) for r in order], out / "report", run_dir=runs,
                     names=[r.method for r in order], extra_markdown=table,
                     extra_images=[out / c for c in curves.values()])
    return table


def ablate(configs: list[str | Path], data: str | Path, steps: int, out: str | Path, *, split: str = "val",
           buckets: list[str] | None = None, seed: int = 42, extra_overrides: list[str] | None = None,
           limit: int | None = None, report: bool = True, log=print) -> str:
    """Train and evaluate every variant in ``configs`` (ablation YAMLs) on the shard dataset
    ``data`` for ``steps`` steps each, one after the other; returns the markdown table (also written
    to ``out/ablation.md``). See the module docstring for everything it writes."""
    configs, data = prepare(configs, data, steps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buckets = buckets or small_buckets(data)
    common = common_overrides(data, steps, buckets, seed, extra_overrides)
    t_all = time.perf_counter()
    results = [run_variant(path, data, steps, out, common, split=split, limit=limit, log=log) for path in configs]
    return write_outputs(results, out, steps=steps, seed=seed, data=data, split=split, buckets=buckets,
                         wall_s=time.perf_counter() - t_all, report=report)


# ---------------------------------------------------------------------------------------------
# CLI (mount as `pvq ablate`)
# ---------------------------------------------------------------------------------------------
def typer_command():
    """``pvq ablate``: a typer command function; register with ``app.command("ablate")(typer_command())``."""
    import typer

    def ablate_(
        configs: list[str] = typer.Option(..., "--configs", help="ablation YAMLs or a quoted glob (repeatable)"),
        more: list[str] = typer.Argument(None, help="more ablation YAMLs (what an unquoted shell glob expands to)"),
        data: str = typer.Option(..., "--data", help="shard dataset (pvq data shard output)"),
        steps: int = typer.Option(40, "--steps", help="training steps per variant"),
        out: Path = typer.Option(Path("ablation"), "--out", help="output directory"),
        split: str = typer.Option("val", help="evaluation split"),
        bucket: list[str] = typer.Option(None, "--bucket", help="training bucket WxH (repeat; default: <=128x128)"),
        seed: int = typer.Option(42, help="seed of every variant"),
        no_report: bool = typer.Option(False, help="skip the HTML report"),
    ):
        """Train every ablation variant with the same data, seed and budget; write the Table-1 comparison."""
        files = expand_configs([*configs, *(more or [])])
        try:
            table = ablate(files, data, steps, out, split=split, buckets=bucket or None, seed=seed,
                           report=not no_report)
        except AblationError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None
        print(table)
        print(f"written: {out / 'ablation.md'}, {out / 'ablation.json'}")

    return ablate_
