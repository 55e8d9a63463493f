"""Run metadata and MLflow logging (rank 0 only)."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "deepspeed", "pvq-vae", "webdataset", "ray", "mlflow", "prefect", "numpy", "diffusers")


def git_state(root: Path | None = None) -> dict[str, str]:
    """Commit hash and dirty flag of the project checkout ("unknown" outside git)."""
    root = root or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip() != ""
        return {"git_commit": commit, "git_dirty": str(dirty).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


class MLflowLogger:
    """Logs one training run: config, DeepSpeed config, git state, data version, seeds, package
    versions as params/tags/artifacts, then per-step metrics."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, artifact_root: Path | None = None):
        """``artifact_root``: where a *new* experiment stores artifacts (for a local sqlite store;
        without it MLflow would write ``./mlruns`` in the current directory)."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        if mlflow.get_experiment_by_name(experiment) is None and artifact_root is not None:
            mlflow.create_experiment(experiment, artifact_location=Path(artifact_root).resolve().as_uri())
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_setup(self, config: dict, ds_config: dict, tags: dict[str, str]) -> None:
        params = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flatten(config).items()}
        items = list(params.items())
        for i in range(0, len(items), 90):
            self.mlflow.log_params(dict(items[i:i + 90]))
        self.mlflow.log_dict(config, "config.json")
        self.mlflow.log_dict(ds_config, "deepspeed_config.json")
        self.mlflow.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def log_artifacts(self, path: Path, artifact_path: str) -> None:
        self.mlflow.log_artifacts(str(path), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)
