"""``pvq reproduce MODEL_URI [--dry-run]``: the command that retrains a registered model.

From the model version (``models:/pvq-vae@champion`` or ``models:/pvq-vae/3``) it reads the
training run: the exact resolved config (artifact ``config.json``), the git commit and dirty flag,
the data path, version and index hash recorded at registration. It writes the config as YAML and
prints the git checkout and the launch command (:mod:`pvq_model.launch`: ``python -m pvq_model.train ...``
directly, under torchrun or in an sbatch script); without
``--dry-run`` it also runs the launch (from the current checkout, after checking the commit).
Every mismatch that would make the retrain differ (dirty tree at training time, another commit
checked out now, a dataset whose LATEST moved on) is printed as a warning.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

import yaml

from flows import registry
from flows.common import ROOT, configure_env, default_tracking_uri


def launcher_for(cfg: dict) -> str:
    t = cfg["train"]
    if t["world_size"] == 1:
        return "single"
    return "local" if t["nodes"] == 1 else "slurm"


def reproduce_plan(model_uri: str, tracking_uri: str | None = None, out: str | Path | None = None,
                   launcher: str | None = None) -> dict:
    """Everything needed to retrain ``model_uri``: {"config_path", "commit", "command", "warnings", ...}."""
    configure_env()
    from data_prep import manifest, storage
    from pvq_model.launch.plan import LaunchRequest, plan
    from pvq_model.train.tracking import git_state

    tracking_uri = tracking_uri or default_tracking_uri()
    c = registry.client(tracking_uri)
    mv = registry.resolve_version(c, model_uri)
    run = c.get_run(mv["run_id"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = json.loads(Path(c.download_artifacts(mv["run_id"], "config.json", tmp)).read_text())
    out = Path(out or ROOT / "runs" / f"reproduce-{mv['name']}-v{mv['version']}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "reproduce_config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    commit = run.data.tags.get("git_commit", "unknown")
    warnings: list[str] = []
    if run.data.tags.get("git_dirty") == "true":
        warnings.append(f"the model was trained from a dirty tree at {commit}: uncommitted changes are not in the "
                        "commit (the resolved config is exact; code changes are not recoverable)")
    now = git_state(ROOT)
    if now["git_commit"] != commit:
        warnings.append(f"this checkout is at {now['git_commit'][:12]}, the model at {commit[:12]}: "
                        f"check out {commit[:12]} first")
    data_path = cfg["train"].get("data_path")
    data_version = mv["tags"].get("data_version")
    if data_path:
        latest = manifest.latest_version(data_path) if storage.exists(data_path) else None
        if latest is None:
            warnings.append(f"dataset {data_path} is not here: rebuild it (shard-data flow) before training")
        elif data_version and latest != data_version:
            warnings.append(f"dataset {data_path} is at {latest} but the model was trained on {data_version}; "
                            "the loader reads LATEST")
    launcher = launcher or launcher_for(cfg)
    p = plan(LaunchRequest(config_path, [], out / "run", launcher, write_script=False))
    return {"model": f"{mv['name']} v{mv['version']}", "run_id": mv["run_id"], "commit": commit,
            "dirty": run.data.tags.get("git_dirty"), "data_path": data_path, "data_version": data_version,
            "seed": cfg["train"]["seed"], "config_path": str(config_path), "launcher": launcher,
            "checkout": f"git -C {shlex.quote(str(ROOT))} checkout {commit}",
            "command": p.command, "out": str(out / "run"), "warnings": warnings}


def reproduce_command(model_uri: str, dry_run: bool = True, launcher: str | None = None, out: str | None = None,
                      tracking_uri: str | None = None) -> int:
    """Print the plan (and run it without ``dry_run``); returns an exit code."""
    from mlflow.exceptions import MlflowException

    try:
        p = reproduce_plan(model_uri, tracking_uri, out, launcher)
    except (ValueError, MlflowException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# {p['model']} (MLflow run {p['run_id']}), data {p['data_path']} {p['data_version']}, seed {p['seed']}")
    for w in p["warnings"]:
        print(f"# warning: {w}")
    print(p["checkout"])
    print(p["command"])
    if dry_run:
        return 0
    from pvq_model.launch.cli import run
    from pvq_model.launch.plan import LaunchRequest

    return run(LaunchRequest(Path(p["config_path"]), [], Path(p["out"]), p["launcher"]))
