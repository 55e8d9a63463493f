"""Controlled training experiments at CPU scale (docs/training_dynamics.md).

Trains one config with the plain loop (``pvq_model.train.fit.fit``: the same generator step as the
DeepSpeed trainer, one process) on the *train* split of a shard dataset and evaluates PSNR on
its *val* split (held-out sources) every ``--eval-every`` steps, beside the mean-colour and pooled
baselines of the same clips. Prints one JSON line per evaluation and, at the end, a summary with
the margins; ``--out FILE`` also writes the curve as JSON.

    python benchmarks/training_dynamics.py --config configs/cpu.yaml --data .cache/cpu_shards \\
        --steps 600 --set quantizer.type=identity --out /tmp/identity.json

Build the data set first: ``pvq data shard -s ../shared/media/videos -s ../shared/media/images
-o .cache/cpu_shards -c configs/shard/cpu.yaml``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pvq_model.config import load_config  # noqa: E402
from pvq_model.eval.evaluate import iter_shard_clips  # noqa: E402
from pvq_model.train.fit import EMAWeights, fit, seed_everything  # noqa: E402
from pvq_model.metrics import clip_metrics  # noqa: E402
from pvq_model.eval.naive import mean_colour, pooled  # noqa: E402
from pvq_model.vae import PVQVAE  # noqa: E402


def load_split(data: str, split: str, videos_only: bool) -> list:
    clips = [c for c in iter_shard_clips(data, split) if not (videos_only and c.kind == "image")]
    if not clips:
        raise SystemExit(f"{data}: no {split} clips")
    return clips


@torch.no_grad()
def psnr_of(fn, clips) -> tuple[float, float]:
    ps, ss = [], []
    for c in clips:
        m = clip_metrics(c.video, fn(c), c.mask)
        ps.append(m.psnr[0])
        ss.append(m.ssim[0])
    return sum(ps) / len(ps), sum(ss) / len(ss)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/cpu.yaml")
    ap.add_argument("--set", action="append", default=[], help="config override key.path=value")
    ap.add_argument("--data", default=".cache/cpu_shards")
    ap.add_argument("--steps", type=int, default=None, help="default: train.steps of the config")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--videos-only", action="store_true", help="train and evaluate on videos only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-data-init", action="store_true", help="skip the quantizer's data_init")
    ap.add_argument("--ema-decays", default="", help="extra EMA decays to evaluate, e.g. 0.9,0.999")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = list(args.set) + ([f"train.steps={args.steps}"] if args.steps else [])
    cfg = load_config(args.config, overrides)  # the schedule decays to 0 at the last step run
    steps = cfg.train.steps
    seed_everything(cfg.train.seed)
    train = load_split(args.data, "train", args.videos_only)
    val = load_split(args.data, "val", args.videos_only)
    model = PVQVAE(cfg)
    factor = model.factor
    base_mean = psnr_of(lambda c: mean_colour(c.video, c.mask), val)
    base_pool = psnr_of(lambda c: pooled(c.video, factor, c.mask), val)
    curve: list[dict] = []
    head = {"config": args.config, "overrides": args.set, "steps": steps, "mean_colour_psnr": base_mean[0],
            "pooled_psnr": base_pool[0]}
    t0 = time.perf_counter()

    def evaluate(step: int, ema: EMAWeights | None, parts: dict) -> None:
        was = model.training
        model.eval()
        raw = psnr_of(lambda c: model(c.video).recon, val)
        row = {"step": step, "val_psnr": raw[0], "val_ssim": raw[1], "wall_s": time.perf_counter() - t0,
               **{k: round(v, 5) for k, v in parts.items()}}
        if ema is not None:
            with ema.swapped(model):
                e = psnr_of(lambda c: model(c.video).recon, val)
            row.update(ema_val_psnr=e[0], ema_val_ssim=e[1])
        for decay, extra in extras.items():
            with extra.swapped(model):
                row[f"ema{decay}_val_psnr"] = psnr_of(lambda c: model(c.video).recon, val)[0]
        model.train(was)
        curve.append(row)
        print(json.dumps(row), flush=True)
        if args.out:  # partial curve after every evaluation (an interrupted run keeps its points)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"summary": dict(head, partial=True), "curve": curve}, indent=1))

    extras: dict[str, EMAWeights] = {}

    def tick(step: int, parts: dict) -> None:
        if step == 0:
            extras.update({d: EMAWeights(model, float(d)) for d in args.ema_decays.split(",") if d})
        for extra in extras.values():
            extra.update(model)

    fit(model, [(c.video, c.mask) for c in train], steps, callback=tick, eval_every=args.eval_every, on_eval=evaluate,
        data_init=not args.no_data_init)
    best = max((r.get("ema_val_psnr", r["val_psnr"]) for r in curve), default=float("nan"))
    last = curve[-1] if curve else {}
    summary = {"config": args.config, "overrides": args.set, "steps": steps,
               "train_clips": len(train), "val_clips": len(val), "compression": list(factor),
               "mean_colour_psnr": base_mean[0], "pooled_psnr": base_pool[0],
               "final_psnr": last.get("ema_val_psnr", last.get("val_psnr")), "best_psnr": best,
               "margin_over_pooled_db": (last.get("ema_val_psnr", last.get("val_psnr")) or 0) - base_pool[0],
               "margin_over_mean_db": (last.get("ema_val_psnr", last.get("val_psnr")) or 0) - base_mean[0],
               "wall_s": time.perf_counter() - t0}
    print(json.dumps({"summary": summary}), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "curve": curve}, indent=1))
    return summary


def plot(files: list[str], out: str, title: str = "") -> None:
    """One PNG with the validation PSNR curve (EMA weights) of each experiment JSON in ``files``,
    and the baselines of the first as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    first = None
    for f in files:
        d = json.loads(Path(f).read_text())
        first = first or d["summary"]
        steps = [r["step"] for r in d["curve"]]
        ax.plot(steps, [r.get("ema_val_psnr", r["val_psnr"]) for r in d["curve"]], marker="o", label=Path(f).stem)
    ax.axhline(first["pooled_psnr"], color="k", ls="--", lw=1, label="pooled baseline")
    ax.axhline(first["mean_colour_psnr"], color="grey", ls=":", lw=1, label="mean-colour baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out PSNR (dB, EMA weights)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "plot":
        # python benchmarks/training_dynamics.py plot OUT.png "title" a.json b.json ...
        plot(sys.argv[4:], sys.argv[2], sys.argv[3])
    else:
        main()
