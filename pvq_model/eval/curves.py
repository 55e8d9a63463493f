"""Training curves, written once for the report and the ablation: per-step metrics read back from a
run's local MLflow store (``RUN/mlflow.db``) and one plotter, one panel per metric, one line per run.
"""

from __future__ import annotations

import logging
from pathlib import Path

TRAIN_KEYS = ("train/psnr", "train/ssim", "loss", "recon", "quantizer", "lr", "quant/usage", "quant/perplexity")
"""What the report plots of a training run."""
CURVE_KEYS = ("train/psnr", "train/ssim", "loss")
"""What the ablation plots: the paper's Fig. 1 (PSNR, SSIM) and Fig. 2 (loss)."""
UNSMOOTHED = ("lr",)
"""Keys drawn as logged; every other key is a moving average over ~10 % of its steps (one step is
one small batch)."""


def plt():
    """matplotlib's pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def read_metrics(db: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, list[tuple[int, float]]]:
    """Per-step metrics of the latest run in a local MLflow sqlite store: ``{key: [(step, value)]}``
    (a resumed step keeps its latest value). ``{}`` when ``db`` does not exist or holds no run.

    Read with ``MlflowClient(tracking_uri="sqlite:///db").get_metric_history``: the sqlite store is
    opened in process (no server) and only read; MLflow's start-up messages are kept out of the log."""
    db = Path(db)
    if not db.is_file():
        return {}
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    quiet = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=f"sqlite:///{db.resolve()}")
        exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        runs = client.search_runs(exps, run_view_type=ViewType.ALL, order_by=["attributes.start_time DESC"],
                                  max_results=1) if exps else []
        if not runs:
            return {}
        run = runs[0]
        out: dict[str, list[tuple[int, float]]] = {}
        for key in sorted(run.data.metrics):
            if keys is not None and key not in keys:
                continue
            by_step: dict[int, float] = {}
            for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp)):
                by_step[int(m.step)] = float(m.value)
            out[key] = sorted(by_step.items())
        return out
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` values (the first ones over what there is)."""
    if window <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(runs: dict[str, Path], path: Path, keys: tuple[str, ...] = CURVE_KEYS, *,
                title: str | None = None, log_keys: tuple[str, ...] = (), cols: int = 3) -> Path | None:
    """One panel per key some run logged (at most ``cols`` per row), one line per run of ``runs``
    (``{name: run directory with mlflow.db}``); keys in ``log_keys`` on a log scale when all their
    values are positive. Returns ``path``, or None when no run logged any of ``keys``."""
    series = {name: read_metrics(Path(d) / "mlflow.db", keys) for name, d in runs.items()}
    series = {n: s for n, s in series.items() if s}
    present = [k for k in keys if any(k in s for s in series.values())]
    if not present:
        return None
    pyplot = plt()
    ncols = min(cols, len(present))
    nrows = (len(present) + ncols - 1) // ncols
    fig, axes = pyplot.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.5 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, present):
        for name, s in series.items():
            if key in s:
                steps, vals = zip(*s[key])
                vals = list(vals) if key in UNSMOOTHED else smooth(list(vals), max(1, len(vals) // 10))
                ax.plot(steps, vals, label=name, lw=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key in log_keys and all(v > 0 for s in series.values() for _, v in s.get(key, [])):
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    if len(series) > 1:
        axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot.close(fig)
    return path
