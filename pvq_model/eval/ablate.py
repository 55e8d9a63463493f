"""The Table-1 ablation harness: train every variant with the same data, seeds and step budget,
evaluate each EMA export, and write the comparison with the seed spread.

``ablate(configs, data, steps, out, seeds=3, base="configs/cpu.yaml")``

* Each ``configs/ablations/*.yaml`` is ``base: ../paper.yaml`` plus a few keys. The harness reads a
  file's *own* keys (not its base) and applies them as overrides on the ``base`` config (default
  ``configs/debug.yaml``, the CPU-sized width; ``configs/cpu.yaml`` is the CPU recipe at 128x128 x 16),
  so every variant differs from the others only by those keys.
* Every (variant, seed) is trained in its own process (``python -m pvq_model.train``), one rank:
  the harness overrides the base's geometry to one process and keeps its global batch through
  gradient accumulation (:func:`single_process_overrides`), so the recorded config is the one that
  ran. Separate processes keep DeepSpeed's process-global distributed state and the per-run MLflow
  store apart, and a crash of one run is recorded in the table instead of ending the comparison. A
  run whose ``result.json`` already reports the full step budget is not trained again (re-running
  the harness after an interruption only trains what is missing). Runs go seed by seed (every
  variant at the first seed, then the next seed), so an interrupted run has a whole table early; ``jobs``
  of them train at once (``pvq ablate --jobs``), each child on its share of the cores.
* Each EMA export is evaluated with :func:`pvq_model.eval.evaluate.evaluate` on the ``split`` of the same
  shard dataset.
* The table gives mean ± std over the seeds (sample std, ddof=1; one seed: the value) and the
  baselines measured on the same validation clips (mean colour, pooled); :data:`PAPER_ORDERINGS`
  are the pairs the paper orders, each compared with :func:`compare_orderings`.

Writes ``out/ablation.md`` (the Table-1 layout: method, codebook size, dim, seeds, PSNR/SSIM/LPIPS on
images and videos, overall PSNR; LPIPS is "absent" when no LPIPS weights are configured; then the
paper's orderings with a verdict each), ``out/ablation.json``, ``out/curves_fft_dwt.png`` (training
loss and L1 reconstruction loss per step of the branch ablations, first seed, read from each run's
``mlflow.db``), ``out/curves_all.png`` (every variant), the runs under ``out/runs/<variant>/seed<s>``
and the evaluations under ``out/evals/<variant>/seed<s>``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import yaml

from pvq_common.env import local_env

from .curves import plot_curves
from .tables import baseline_label, markdown_table, mean_std, method_label, metric_cell, table1_header, table1_row

ROOT = Path(__file__).resolve().parents[2]
DEBUG_CONFIG = ROOT / "configs" / "debug.yaml"
BRANCH_VARIANTS = ("pvq", "no_fft", "no_dwt", "no_fft_dwt")
SMALL_BUCKET_PIXELS = 128 * 128


def table_order() -> tuple[str, ...]:
    """Rows of the ablation table: the Table-1 quantizers in the registry's order, then the branch variants."""
    from ..quantizers import TABLE1_TYPES  # torch: imported when a table is built, not with this module

    return (*TABLE1_TYPES, *(v for v in BRANCH_VARIANTS if v not in TABLE1_TYPES))


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


def small_buckets(data: str) -> list[str]:
    """The training buckets of a shard dataset whose frames have at most 128x128 pixels (CPU-sized)."""
    from data_prep.loader import ShardLoader

    buckets = ShardLoader(str(data), split="train").buckets
    small = [b for b in buckets if int(b.split("x")[0]) * int(b.split("x")[1]) <= SMALL_BUCKET_PIXELS]
    return small or list(buckets)


# ---------------------------------------------------------------------------------------------
# training runs and their curves
# ---------------------------------------------------------------------------------------------
def train_variant(overrides: list[str], run_dir: Path, steps: int, timeout_s: float | None = None, *,
                  base: str | Path = DEBUG_CONFIG, threads: int | None = None) -> dict:
    """Train one variant (``overrides`` on ``base``) in a child process; returns its ``result.json``
    (skips a finished run). ``run_dir/harness.json`` records the base and overrides: a run directory
    trained with other settings is an error, never silently reused or resumed. ``threads``: the
    child's CPU threads (``OMP_NUM_THREADS``; None: the inherited setting)."""
    run_dir = Path(run_dir).resolve()  # the child runs in run_dir: a relative --out would nest
    result_file, settings_file = run_dir / "result.json", run_dir / "harness.json"
    settings = {"base": str(Path(base).resolve()), "overrides": list(overrides)}
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        raise RuntimeError(f"{run_dir} was trained with other settings (see {settings_file}): "
                           f"use another --out or delete that directory")
    if result_file.is_file() and settings_file.is_file():
        res = json.loads(result_file.read_text())
        if res.get("step") == steps and Path(res.get("export") or "").is_dir():
            return res
    run_dir.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings, indent=2))
    cmd = [sys.executable, "-m", "pvq_model.train", "--config", settings["base"], "--out", str(run_dir)]
    for o in overrides:
        cmd += ["--set", o]
    env = local_env()  # the loopback-only settings (no telemetry, no usage stats) under the caller's env
    env.pop("MLFLOW_TRACKING_URI", None)  # each run keeps its own sqlite store in run_dir/mlflow.db
    env.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(run_dir / "train.log", "w") as log:
        proc = subprocess.run(cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s)
    if proc.returncode != 0 or not result_file.is_file():
        tail = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"training failed (exit {proc.returncode}), log {run_dir / 'train.log'}: "
                           + " | ".join(tail))
    return json.loads(result_file.read_text())


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
@dataclass
class VariantResult:
    """One (variant, seed) run: what trained and its evaluation's summary parts."""

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
    seed: int = 42
    overall: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)


TABLE_HEADER = table1_header("PSNR (all)", seeds=True)
PARTS = ("images", "videos", "overall")
METRICS = ("psnr", "ssim", "lpips")


def group_runs(results: list[VariantResult]) -> dict[str, list[VariantResult]]:
    """The runs of each variant (every seed), variants in first-seen (Table-1) order."""
    groups: dict[str, list[VariantResult]] = {}
    for r in results:
        groups.setdefault(r.variant, []).append(r)
    return groups


def shared_baselines(results: list[VariantResult]) -> dict[str, dict]:
    """``{row label: baseline entry}`` over the evaluated runs, first occurrence of each label: all
    variants are evaluated on the same clips and share the compression factor, so this is one
    mean-colour and one pooled row for the whole set (without ``margin_db``, which is one run's)."""
    out: dict[str, dict] = {}
    for r in results:
        for name, b in (r.baselines or {}).items():
            out.setdefault(baseline_label(name, b), {k: v for k, v in b.items() if k != "margin_db"})
    return out


def variant_stats(runs: list[VariantResult]) -> dict:
    """One variant over its seeds: ``{part: {metric: {"mean", "std", "values"}}}`` for the parts
    with clips and the metrics measured on every seed (sample std, ddof=1; None with one seed),
    the seeds that finished and the errors of those that failed."""
    ok = [r for r in runs if not r.error]
    r0 = runs[0]
    stats = {"variant": r0.variant, "method": r0.method, "codebook_size": r0.codebook_size, "dim": r0.dim,
             "levels": r0.levels, "fft": r0.fft, "dwt": r0.dwt, "seeds": [r.seed for r in ok],
             "failed": {str(r.seed): r.error for r in runs if r.error}}
    for part in PARTS:
        stats[part] = {}
        for metric in METRICS:
            values = [getattr(r, part).get(metric) for r in ok if getattr(r, part).get("clips")]
            if values and None not in values:
                mean, std = mean_std(values)
                stats[part][metric] = {"mean": mean, "std": std, "values": values}
    return stats


def table_rows(results: list[VariantResult]) -> list[list[str]]:
    """The Table-1 layout (header first): one row per variant, mean ± std over its seeds, then one
    row per baseline measured on the same clips."""
    rows = [list(TABLE_HEADER)]
    for runs in group_runs(results).values():
        ok = [r for r in runs if not r.error]
        r0 = runs[0]
        if not ok:
            rows.append([r0.method, str(r0.codebook_size), str(r0.dim), f"failed: {r0.error[:60]}"]
                        + [""] * (len(TABLE_HEADER) - 4))
            continue
        seeds = str(len(ok)) if len(ok) == len(runs) else f"{len(ok)} of {len(runs)}"
        rows.append(table1_row(r0.method, r0.codebook_size, r0.dim, [vars(r) for r in ok],
                               metric_cell([r.overall for r in ok], "psnr", 2), seeds=seeds))
    for label, b in shared_baselines(results).items():
        rows.append(table1_row(label, "-", "-", [b], metric_cell([b.get("overall", {})], "psnr", 2), seeds="-"))
    return rows


def table_markdown(results: list[VariantResult], header: str = "") -> str:
    """The table as markdown, after ``header``, then a line per failed (variant, seed) run."""
    failed = [f"- {r.method}, seed {r.seed}: failed: {r.error}" for r in results if r.error]
    return ((header + "\n" if header else "") + markdown_table(table_rows(results))
            + ("\n" + "\n".join(failed) + "\n" if failed else ""))


# ---------------------------------------------------------------------------------------------
# the paper's orderings
# ---------------------------------------------------------------------------------------------
class Ordering(NamedTuple):
    better: str  # the variant the paper ranks higher
    worse: str
    part: str  # the PSNR compared: "images" (COCO-Val), "videos" (WebVid-Val) or "overall"
    paper_better: float | None  # the paper's PSNR (dB) of `better`; None where it shows only curves
    paper_worse: float | None
    source: str


PAPER_ORDERINGS: tuple[Ordering, ...] = (
    Ordering("pvq", "rvq_lfq", "images", 35.12, 34.78, "Table 1, COCO-Val PSNR"),
    Ordering("rvq_lfq", "psvq", "images", 34.78, 34.45, "Table 1, COCO-Val PSNR"),
    Ordering("psvq", "lfq", "images", 34.45, 34.22, "Table 1, COCO-Val PSNR"),
    Ordering("lfq", "rvq", "images", 34.22, 33.92, "Table 1, COCO-Val PSNR"),
    Ordering("rvq", "gvq", "images", 33.92, 32.25, "Table 1, COCO-Val PSNR"),
    Ordering("gvq", "vq", "images", 32.25, 31.45, "Table 1, COCO-Val PSNR"),
    Ordering("pvq", "rvq_lfq", "videos", 36.01, 35.27, "Table 1, WebVid-Val PSNR"),
    Ordering("rvq_lfq", "psvq", "videos", 35.27, 34.98, "Table 1, WebVid-Val PSNR"),
    Ordering("psvq", "rvq", "videos", 34.98, 34.22, "Table 1, WebVid-Val PSNR"),
    Ordering("rvq", "lfq", "videos", 34.22, 33.92, "Table 1, WebVid-Val PSNR"),
    Ordering("lfq", "gvq", "videos", 33.92, 33.34, "Table 1, WebVid-Val PSNR"),
    Ordering("gvq", "vq", "videos", 33.34, 32.91, "Table 1, WebVid-Val PSNR"),
    Ordering("pvq", "no_fft", "overall", None, None, "supplementary §3.2, Fig. 1-2 (curves)"),
    Ordering("pvq", "no_dwt", "overall", None, None, "supplementary §3.2, Fig. 1-2 (curves)"),
    Ordering("no_fft", "no_fft_dwt", "overall", None, None, "supplementary §3.2, Fig. 1-2 (curves)"),
    Ordering("no_dwt", "no_fft_dwt", "overall", None, None, "supplementary §3.2, Fig. 1-2 (curves)"),
)
"""The pairs the paper orders (PSNR, higher is better). Table 1 as adjacent pairs of its rows sorted
by PSNR, separately for images and videos, since the two columns order LFQ and RVQ differently
(COCO-Val LFQ 34.22 > RVQ 33.92, WebVid-Val RVQ 34.22 > LFQ 33.92); every other pair of the table
follows by transitivity. The branch ablation gives curves, no numbers ("a significant drop ... when
either the FFT or wavelet modules are removed, with the greatest decline observed when both are
omitted"), compared here on the overall PSNR."""

PART_LABELS = {"images": "Img PSNR", "videos": "Vid PSNR", "overall": "PSNR (all)"}


def verdict(difference: float, spread: float | None) -> str:
    """"holds" (``difference > spread``: the paper's direction), "reversed" (``-difference >
    spread``), "not resolved" (``|difference| <= spread``); "one seed" when no spread was measured."""
    if spread is None:
        return "one seed"
    if difference > spread:
        return "holds"
    return "reversed" if -difference > spread else "not resolved"


def compare_orderings(psnr: dict[str, dict[str, list[float]]],
                      orderings: tuple[Ordering, ...] = PAPER_ORDERINGS) -> list[dict]:
    """Each ordering whose two variants have values in ``psnr`` (``{variant: {part: [PSNR per
    seed]}}``), with both means, their ``difference`` (better minus worse: positive is the paper's
    direction), the ``spread`` and the :func:`verdict`.

    The spread is the larger of the two variants' sample stds over seeds (ddof=1), not their pooled
    std: the question is whether the gap exceeds the seed-to-seed variation of *either* variant, and
    with 3 seeds a std is itself uncertain by about +-50 %, so the larger one errs toward "not
    resolved" instead of calling a gap that another seed could undo. (A variant with one finished
    seed contributes no std; with neither, the spread is None.) It is a yardstick, not a test."""
    out = []
    for o in orderings:
        a, b = psnr.get(o.better, {}).get(o.part), psnr.get(o.worse, {}).get(o.part)
        if not a or not b:
            continue
        (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
        stds = [s for s in (std_a, std_b) if s is not None]
        spread = max(stds) if stds else None
        difference = mean_a - mean_b
        out.append({**o._asdict(), "mean_better": mean_a, "mean_worse": mean_b, "seeds": [len(a), len(b)],
                    "difference": difference, "spread": spread, "verdict": verdict(difference, spread)})
    return out


def orderings_markdown(comparisons: list[dict], methods: dict[str, str]) -> str:
    """The comparisons as a markdown table with a one-line tally; ``methods``: variant -> row name."""
    if not comparisons:
        return "No pair the paper orders has both variants in this run.\n"
    rows = [["Paper's ordering", "Metric", "Paper (dB)", "Difference here (dB)", "Spread (dB)", "Verdict"]]
    for c in comparisons:
        paper = (f"{c['paper_better']:.2f} > {c['paper_worse']:.2f}" if c["paper_better"] is not None
                 else "curves only")
        rows.append([f"{methods[c['better']]} > {methods[c['worse']]}", PART_LABELS[c["part"]], paper,
                     f"{c['difference']:+.2f}", "n/a" if c["spread"] is None else f"{c['spread']:.2f}",
                     c["verdict"]])
    tally = {v: sum(c["verdict"] == v for c in comparisons) for v in ("holds", "reversed", "not resolved", "one seed")}
    return ("Difference: mean PSNR of the first minus the second over seeds; spread: the larger of the two "
            "sample stds; holds: difference > spread; reversed: -difference > spread; not resolved: "
            "|difference| <= spread.\n\n" + markdown_table(rows) + "\n"
            + ", ".join(f"{v}: {n}" for v, n in tally.items() if n) + f" of {len(comparisons)} pairs.\n")


# ---------------------------------------------------------------------------------------------
# the harness
# ---------------------------------------------------------------------------------------------
def seed_list(seeds: int | list[int], first: int = 42) -> list[int]:
    """``seeds`` as a list: a count N gives ``first, first + 1, ..., first + N - 1``."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise AblationError(f"--seeds must be >= 1, got {seeds}")
        return list(range(first, first + seeds))
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise AblationError(f"seeds must be distinct and at least one, got {out}")
    return out


def common_overrides(data: str, steps: int, buckets: list[str], seed: int = 42,
                     extra: list[str] | None = None) -> list[str]:
    """The overrides every variant of one seed shares: data, buckets, step budget, seed, schedule."""
    return [f"train.data_path={data}", f"train.steps={steps}", f"train.seed={seed}",
            f"train.data_buckets={json.dumps(buckets)}", f"train.checkpoint_every={steps + 1}",
            f"train.warmup_steps={max(1, min(20, steps // 10))}", *(extra or [])]


def single_process_overrides(cfg) -> list[str]:
    """Overrides that make ``cfg`` describe the one process the harness trains in, with the same
    global batch: world size 1 and the ranks' micro-batches accumulated instead, ``grad_accum x
    world_size`` (configs/cpu.yaml: 2 ranks x micro-batch 2 becomes 1 rank x micro-batch 2 x 2
    accumulated, a global batch of 4 either way; the trainer logs the same losses for both layouts).
    Empty when the config already describes one process."""
    t = cfg.train
    if (t.nodes, t.gpus_per_node, t.world_size) == (1, 1, 1):
        return []
    return ["train.nodes=1", "train.gpus_per_node=1", "train.world_size=1",
            f"train.grad_accum={t.grad_accum * t.world_size}"]


def resolve_variant(config: str | Path, common: list[str], base: str | Path = DEBUG_CONFIG):
    """(variant, overrides, resolved config) of one ablation file on ``base``: the file's own keys,
    then ``common``, then the one-process geometry. Loading validates it (a bad key raises
    :class:`pvq_model.config.ConfigError` naming the key) before anything trains."""
    from ..config import load_config

    variant, own = variant_overrides(config)
    overrides = own + list(common)
    cfg = load_config(base, overrides)
    geometry = single_process_overrides(cfg)
    if geometry:
        overrides += geometry
        cfg = load_config(base, overrides)
    return variant, overrides, cfg


def prepare(configs: list[str | Path], data: str | Path, steps: int,
            base: str | Path = DEBUG_CONFIG) -> tuple[list[Path], str]:
    """Validated inputs: configs in Table-1 order and the absolute shard dataset path."""
    from .evaluate import is_shard_dataset

    if steps < 1:
        raise AblationError(f"--steps must be >= 1, got {steps}")
    if not Path(base).is_file():
        raise AblationError(f"base config not found: {base} (e.g. --base configs/cpu.yaml)")
    data = str(Path(data).resolve()) if "://" not in str(data) else str(data)
    if not is_shard_dataset(data):
        raise AblationError(f"{data}: not a shard dataset (no LATEST file); training needs shards: "
                            f"run `pvq data shard` first")
    rank = {v: i for i, v in enumerate(table_order())}
    ordered = sorted({Path(c) for c in configs}, key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    if not ordered:
        raise AblationError("no ablation configs given (e.g. --configs configs/ablations/*.yaml)")
    return ordered, data


def run_variant(config: str | Path, data: str, steps: int, out: str | Path, common: list[str], *,
                split: str = "val", limit: int | None = None, log=print,
                base: str | Path = DEBUG_CONFIG, threads: int | None = None,
                eval_lock: threading.Lock | None = None) -> VariantResult:
    """Train (``out/runs/VARIANT/seedS``, S the ``train.seed`` in ``common``; ``threads``: see
    :func:`train_variant`) and evaluate (``out/evals/VARIANT/seedS``, holding ``eval_lock`` when
    given: evaluations run in this process, one at a time) one ablation variant; a failure is
    recorded in ``VariantResult.error`` (one Prefect task of the ``ablate`` flow)."""
    from .evaluate import evaluate

    out = Path(out)
    variant, overrides, cfg = resolve_variant(config, common, base)
    q, seed = cfg.quantizer, cfg.train.seed
    r = VariantResult(variant, method_label(cfg), q.codebook_size, q.dim, q.num_levels,
                      cfg.model.encoder.fft, cfg.model.encoder.dwt, seed=seed,
                      run_dir=str(out / "runs" / variant / f"seed{seed}"),
                      eval_dir=str(out / "evals" / variant / f"seed{seed}"))
    log(f"[{variant} seed {seed}] {r.method} / {r.codebook_size} / {r.dim}: training {steps} steps")
    try:
        t0 = time.perf_counter()
        res = train_variant(overrides, Path(r.run_dir), steps, base=base, threads=threads)
        r.train_s = time.perf_counter() - t0
        r.steps = int(res["step"])
        r.final_loss = float(res["losses"][-1]) if res.get("losses") else None
        with eval_lock or contextlib.nullcontext():
            t0 = time.perf_counter()
            ev = evaluate(res["export"], data, r.eval_dir, split=split, limit=limit)
            r.eval_s = time.perf_counter() - t0
        s = ev.summary
        r.images, r.videos, r.overall, r.codebook = s["images"], s["videos"], s["overall"], s["codebook"]
        r.baselines = s.get("baselines", {})
        log(f"[{variant} seed {seed}] trained in {r.train_s:.0f} s, evaluated in {r.eval_s:.0f} s: "
            f"overall PSNR {s['overall']['psnr']:.2f}")
    except Exception as e:  # one broken run is a row of the table, not the end of the comparison
        r.error = f"{type(e).__name__}: {e}"
        log(f"[{variant} seed {seed}] failed: {r.error}")
    return r


def _display_path(path: str | Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def write_outputs(results: list[VariantResult], out: str | Path, *, steps: int, data: str, split: str,
                  buckets: list[str], wall_s: float, seed: int | None = None, base: str | Path = DEBUG_CONFIG,
                  report: bool = True) -> str:
    """``ablation.md``, ``ablation.json``, the curve PNGs and (``report``) ``report/index.html``;
    returns the markdown (table and orderings). The seeds are the results' own (``seed`` is
    accepted for callers that pass it; it is not used)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r.seed for r in results})
    header = (f"Small-scale ablation (base {_display_path(base)}, {steps} steps per run, one process, seeds "
              f"{', '.join(map(str, seeds))}, buckets {', '.join(buckets)}; evaluated on the {split} split of "
              f"{data}). Not the paper's scale: compare rows with each other, not with the paper. Cells are "
              f"mean ± std over the seeds (sample std, ddof=1); the baseline rows are measured on the same "
              f"validation clips.\n")
    groups = group_runs(results)
    stats = [variant_stats(runs) for runs in groups.values()]
    comparisons = compare_orderings({s["variant"]: {p: s[p]["psnr"]["values"] for p in PARTS if "psnr" in s[p]}
                                     for s in stats})
    methods = {s["variant"]: s["method"] for s in stats}
    md = (table_markdown(results, header) + "\n### The paper's orderings at this scale\n\n"
          + orderings_markdown(comparisons, methods))
    firsts = {v: next(r for r in runs if not r.error) for v, runs in groups.items() if any(not r.error for r in runs)}
    runs = {v: Path(r.run_dir) for v, r in firsts.items()}  # curves and report: each variant's first seed
    branch = {v: p for v, p in runs.items() if v in BRANCH_VARIANTS}
    curves = {}
    if branch and plot_curves(branch, out / "curves_fft_dwt.png", title="FFT/DWT branch ablation", log_keys=("loss",)):
        curves["fft_dwt"] = "curves_fft_dwt.png"
    if runs and plot_curves(runs, out / "curves_all.png", title="all variants", log_keys=("loss",)):
        curves["all"] = "curves_all.png"
    page = md + "".join(f"\n![{k} curves]({v})\n" for k, v in curves.items())
    page += f"\nWall time: {wall_s:.0f} s for {len(results)} runs ({len(groups)} variants x {len(seeds)} seeds).\n"
    (out / "ablation.md").write_text(page)
    (out / "ablation.json").write_text(json.dumps(
        {"steps": steps, "seeds": seeds, "base": _display_path(base), "data": data, "split": split,
         "buckets": buckets, "wall_s": wall_s, "curves": curves, "variants": stats, "orderings": comparisons,
         "baselines": shared_baselines(results), "runs": [asdict(r) for r in results]}, indent=2))
    if report and runs:
        from .report import build_report

        order = sorted(firsts.values(), key=lambda r: r.variant != "pvq")
        build_report([Path(r.eval_dir) for r in order], out / "report", run_dir=runs,
                     names=[r.method for r in order], extra_markdown=md,
                     extra_images=[out / c for c in curves.values()])
    return md


def ablate(configs: list[str | Path], data: str | Path, steps: int, out: str | Path, *, split: str = "val",
           buckets: list[str] | None = None, seed: int = 42, seeds: int | list[int] = 1,
           base: str | Path = DEBUG_CONFIG, extra_overrides: list[str] | None = None, limit: int | None = None,
           report: bool = True, log=print, jobs: int = 1) -> str:
    """Train and evaluate every variant in ``configs`` (ablation YAMLs, applied on ``base``) on the
    shard dataset ``data`` for ``steps`` steps, once per seed (``seeds``: a list, or a count N for
    ``seed .. seed + N - 1``); returns the markdown (table and the paper's orderings, also in
    ``out/ablation.md``). See the module docstring for everything it writes.

    ``jobs``: trainings run at once, each child on ``usable cores // jobs`` threads (at least 1);
    evaluations run one at a time in this process. On a small CPU model two 1-thread runs finish
    sooner than two 2-thread runs in turn (process start-up and small convolutions use one core).
    The table does not depend on ``jobs`` beyond floating-point summation order."""
    if jobs < 1:
        raise AblationError(f"--jobs must be >= 1, got {jobs}")
    configs, data = prepare(configs, data, steps, base)
    seeds = seed_list(seeds, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buckets = buckets or small_buckets(data)
    commons = {s: common_overrides(data, steps, buckets, s, extra_overrides) for s in seeds}
    for path in configs:  # a bad config fails before anything trains
        resolve_variant(path, commons[seeds[0]], base)
    t_all = time.perf_counter()
    threads = max(1, len(os.sched_getaffinity(0)) // jobs) if jobs > 1 else None
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # submitted seed by seed, results in that order
        futures = [pool.submit(run_variant, path, data, steps, out, commons[s], split=split, limit=limit,
                               log=log, base=base, threads=threads, eval_lock=lock)
                   for s in seeds for path in configs]
        results = [f.result() for f in futures]
    return write_outputs(results, out, steps=steps, data=data, split=split, buckets=buckets,
                         wall_s=time.perf_counter() - t_all, base=base, report=report)
