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
    versions as params/tags/artifacts, then per-step metrics.

    Uses an explicit ``MlflowClient`` for ``tracking_uri``: no process-global MLflow state (the
    fluent API's ``set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI``, which would send a second
    run in the same process to the first run's store)."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, artifact_root: Path | None = None,
                 resume_run_id: str | None = None):
        """``artifact_root``: where a *new* experiment stores artifacts (for a local sqlite store;
        without it MLflow would write ``./mlruns`` in the current directory). ``resume_run_id``: the
        run of an earlier (killed or stopped) attempt of the same run directory; it is set back to
        RUNNING and continued, so a resumed training is one MLflow run (a new run if it is gone)."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = Path(artifact_root).resolve().as_uri() if artifact_root is not None else None
            exp_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        self.resumed = False
        if resume_run_id:
            try:
                old = self.client.get_run(resume_run_id)
                if old.info.experiment_id == exp_id and old.info.lifecycle_stage == "active":
                    self.client.update_run(resume_run_id, status="RUNNING")
                    self.run, self.resumed = self.client.get_run(resume_run_id), True
            except MlflowException:
                pass
        if not self.resumed:
            self.run = self.client.create_run(exp_id, run_name=run_name)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_setup(self, config: dict, ds_config: dict, tags: dict[str, str]) -> None:
        """Params, tags and the two config files; credentials in any URI among them are redacted
        (``http://user:***@host``, ``?token=***``): the run's metadata is readable by everyone who
        can read the tracking server."""
        from mlflow.entities import Param, RunTag

        from data_prep.storage import redact, redact_tree

        config, ds_config = redact_tree(config), redact_tree(ds_config)
        tags = {k: redact(str(v)) for k, v in tags.items()}
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in flatten(config).items()]
        if self.resumed:  # params are immutable: keep the first attempt's, record what a resume changed as tags
            have = self.run.data.params
            tags = {**tags, **{f"resume_changed.{p.key}": p.value for p in params
                               if p.key in have and have[p.key] != p.value}}
            params = [p for p in params if p.key not in have]
        for i in range(0, len(params), 90):
            self.client.log_batch(self.run_id, params=params[i:i + 90])
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.log_dict(self.run_id, config, "config.json")
        self.client.log_dict(self.run_id, ds_config, "deepspeed_config.json")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifacts(self, path: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(path), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
