"""``python -m flows.demo``: the whole DAG in-process, without servers (Prefect's ephemeral API on
127.0.0.1, local Ray, MLflow sqlite under PVQ_WORK_DIR): shard the embedded demo set, train the
debug model, evaluate, register; then print where to look. The entry point for ``make demo``."""

from __future__ import annotations

import argparse
import os
import sys


def ema_decay(steps: int) -> float:
    """An EMA decay whose horizon (1 / (1 - decay)) is a tenth of the run, at most the paper's 0.999:
    with 0.999 a 300-step EMA would still be 74 % the initial weights."""
    return round(min(0.999, max(0.5, 1 - 10 / max(steps, 1))), 4)


DEMO_CONFIG = "configs/demo.yaml"
DEMO_MARGIN_DB = 3.0
"""The demo's model must beat the mean-colour baseline of its own validation clips by this much."""


def format_margins(baselines: dict) -> str:
    """The validation PSNR beside the baselines of the same clips, and the demo's bar."""
    if not baselines:
        return "baselines     : not in the evaluation summary"
    lines = []
    for name, b in baselines.items():
        base, margin = b["overall"]["psnr"], b["margin_db"]
        line = f"baseline      : {name.replace('_', ' '):<12} {base:6.2f} dB  -> model {margin:+.2f} dB"
        if name == "mean_colour":
            line += f"  ({'meets' if margin >= DEMO_MARGIN_DB else 'BELOW'} the demo's +{DEMO_MARGIN_DB:.0f} dB bar)"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps of the demo model (configs/demo.yaml)")
    ap.add_argument("--launcher", default="local", choices=["single", "local"],
                    help="local: 2 CPU ranks under torchrun in an isolated network namespace (needs root/unshare)")
    ap.add_argument("--nproc", type=int, default=2)
    a = ap.parse_args(argv)
    from flows.common import configure_env, default_tracking_uri, work_dir

    configure_env()
    os.environ.setdefault("PREFECT_HOME", str(work_dir().parent / "prefect"))
    from flows.train_pvq import train_pvq

    overrides = [f"train.steps={a.steps}", f"train.warmup_steps={max(1, a.steps // 10)}",
                 f"train.checkpoint_every={max(a.steps // 2, 1)}", "data.frames=[16]",
                 f"train.ema_decay={ema_decay(a.steps)}"]
    state = train_pvq(config=DEMO_CONFIG, sources=["demo"], overrides=overrides, launcher=a.launcher,
                      nproc=a.nproc if a.launcher == "local" else None, return_state=True)
    if not state.is_completed():
        print(f"demo failed: {state.message}", file=sys.stderr)
        return 1
    res = state.result()
    uri = default_tracking_uri()
    print(f"\nregistered pvq-vae v{res['version']} (champion v{res['champion']}), score {res['score']:.2f} dB")
    print(format_margins(res.get("baselines", {})))
    print(f"run directory : {res['run_dir']} (evaluation/summary.json, evaluation/clips.parquet)")
    if uri.startswith("sqlite:"):
        store = uri.removeprefix("sqlite:///")
        print(f"MLflow UI     : mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
              f"   (store {store})")
    else:
        from data_prep.storage import redact

        print(f"MLflow        : {redact(uri)}")
    print("re-evaluate   : python -c \"from flows.reevaluate import reevaluate; print(reevaluate())\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
