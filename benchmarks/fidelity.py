"""Does the trained model beat the information-equivalent baselines on footage it never saw?

Trains a config with ``pvq train``'s DeepSpeed path (2 CPU ranks under torchrun, in a private
network namespace when this user may create one; else one process) on the *train* split of a
shard dataset of real footage, or takes an existing export, then evaluates it on the *val* split
(sources held out by the shard job: no clip of a validation source is ever trained on) and prints
PSNR / SSIM of the model beside the mean-colour and pooled baselines of the same clips, the
margins, and the bar:

    paper compression (16x32x32): model >= pooled + 2 dB
    4x8x8:                        model >= pooled + 3 dB

    python benchmarks/fidelity.py --config configs/cpu.yaml            # trains (~30 min), evaluates
    python benchmarks/fidelity.py --config configs/cpu_4x8x8.yaml
    python benchmarks/fidelity.py --export runs/fidelity-cpu/export    # evaluate only

The data set is built on first use from ../shared/media (real clips and photos; not shipped with
the project) with configs/shard/cpu.yaml. Exit code 0 when the bar is met, 1 when it is not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pvq_common.env import local_env  # noqa: E402

MEDIA = ROOT.parent / "shared" / "media"
BARS = {(16, 32, 32): 2.0, (4, 8, 8): 3.0}
"""dB over the pooled baseline that each compression must reach (the issue's bars)."""


def ensure_dataset(data: Path, shard_config: Path) -> Path:
    """The shard dataset at ``data``, built from ../shared/media when it has no LATEST yet."""
    if (data / "LATEST").is_file():
        return data
    if not MEDIA.is_dir():
        raise SystemExit(f"{data} is not a shard dataset and {MEDIA} (the real footage) is missing: "
                         f"shard your own videos with `pvq data shard -s DIR -o {data} -c {shard_config}`")
    sources = [str(MEDIA / "videos"), str(MEDIA / "images")]
    cmd = [sys.executable, "-m", "flows.cli", "data", "shard", *sum((["-s", s] for s in sources), []),
           "-o", str(data), "-c", str(shard_config)]
    print("building the data set:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return data


def can_isolate() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None and \
        subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


def train(config: Path, data: Path, run: Path, overrides: list[str], nproc: int) -> tuple[Path, float]:
    """Train with the DeepSpeed trainer; returns (export directory, wall seconds)."""
    env = {**local_env(), "PYTHONUNBUFFERED": "1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))}
    sets = sum((["--set", s] for s in [f"train.data_path={data.resolve()}", *overrides]), [])
    launch = [sys.executable, "-m", "pvq_model.launch", "--config", str(config), "--out", str(run), "--cpu", *sets]
    if nproc > 1 and can_isolate():
        cmd = [str(ROOT / "infra" / "local" / "isolated.sh"), *launch, "--launcher", "local", "--nproc", str(nproc)]
    else:
        if nproc > 1:
            print("no private network namespace here (needs root and unshare): training in one process", flush=True)
        cmd = [*launch, "--launcher", "single"]
    print("training:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    export = run / "export"
    if not (export / "model.safetensors").is_file():
        raise SystemExit(f"{run}: training finished without an export")
    return export, wall


def report(summary: dict, bar: float | None, wall: float | None, factor: tuple[int, int, int]) -> tuple[str, bool]:
    b = summary["baselines"]
    rows = [("model", summary["overall"]), ("mean colour", b["mean_colour"]["overall"]),
            ("pooled " + "x".join(map(str, factor)), b["pooled"]["overall"])]
    lines = [f"{'':<20}{'clips':>6}{'PSNR dB':>10}{'SSIM':>8}"]
    lines += [f"{name:<20}{r['clips']:>6}{r['psnr']:>10.2f}{r['ssim']:>8.4f}" for name, r in rows]
    lines.append(f"margin over mean colour: {b['mean_colour']['margin_db']:+.2f} dB")
    lines.append(f"margin over pooled     : {b['pooled']['margin_db']:+.2f} dB")
    ok = True
    if bar is not None:
        ok = b["pooled"]["margin_db"] >= bar
        gap = b["pooled"]["margin_db"] - bar
        lines.append(f"bar: pooled + {bar:.1f} dB -> " + (f"MET ({gap:+.2f} dB over it)" if ok
                                                           else f"NOT MET (short by {-gap:.2f} dB)"))
    if wall is not None:
        lines.append(f"training wall time: {wall / 60:.1f} min")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "cpu.yaml")
    ap.add_argument("--export", type=Path, help="evaluate this export instead of training")
    ap.add_argument("--data", type=Path, default=ROOT / ".cache" / "cpu_shards")
    ap.add_argument("--shard-config", type=Path, default=ROOT / "configs" / "shard" / "cpu.yaml")
    ap.add_argument("--run", type=Path, help="run directory (default runs/fidelity-<config name>)")
    ap.add_argument("--set", action="append", default=[], help="config override for training")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--bar", type=float, default=None, help="dB over pooled (default: by compression)")
    a = ap.parse_args(argv)
    from pvq_model.config import load_config
    from pvq_model.eval.evaluate import evaluate

    data = ensure_dataset(a.data, a.shard_config)
    wall = None
    if a.export is None:
        run = a.run or ROOT / "runs" / f"fidelity-{a.config.stem}"
        if run.exists():
            shutil.rmtree(run)
        export, wall = train(a.config, data, run, a.set, a.nproc)
    else:
        export, run = a.export, a.run or a.export.parent
    res = evaluate(export, data, run / "fidelity", split="val", tiled=False)
    factor = tuple(load_config(export / "config.yaml").model.compression)
    bar = a.bar if a.bar is not None else BARS.get(factor)
    text, ok = report(res.summary, bar, wall, factor)
    print(text)
    (run / "fidelity" / "fidelity.json").write_text(json.dumps(
        {"config": str(a.config), "export": str(export), "data": str(data), "wall_s": wall, "bar_db": bar,
         "met": ok, "overall": res.summary["overall"], "baselines": res.summary["baselines"]}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
