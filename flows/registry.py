"""MLflow model registry operations of the flows (plain functions over an ``MlflowClient``).

A model version is created from the training run's ``export/`` artifact (the consolidated EMA
weights + config.yaml), tagged with what rebuilds it (git commit, dirty flag, data version, seed)
and its evaluation metrics, and gets the alias ``challenger``. If any step after the version was
created fails, the version is deleted again: nothing half-registered remains.
"""

from __future__ import annotations

import os
from pathlib import Path

CHALLENGER = "challenger"
CHAMPION = "champion"
SCORE_TAG = "eval_score"
"""Model-version tag: the score (mean PSNR over all validation clips) models are compared by."""


def client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(c, name: str, artifact_root: Path | None) -> str:
    """The experiment id of ``name``, created with ``artifact_root`` (for a local store: so no
    artifact ever lands in ``./mlruns``) when it does not exist."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root is not None else None
    if artifact_root is not None:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
    return c.create_experiment(name, artifact_location=location)


def log_metrics(c, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i:i + 500])


def alias_version(c, name: str, alias: str):
    """The model version behind ``name@alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register_version(c, name: str, run_id: str, tags: dict[str, str], description: str = ""):
    """Create ``name`` (if needed) and a version from ``runs:/run_id/export``; alias challenger.

    Raises ``ValueError`` (and registers nothing) when the run has no ``export`` artifact."""
    from mlflow.exceptions import MlflowException

    run = c.get_run(run_id)
    files = {f.path for f in c.list_artifacts(run_id, "export")}
    if not {"export/model.safetensors", "export/config.yaml"} <= files:
        raise ValueError(f"MLflow run {run_id} has no export/model.safetensors + export/config.yaml "
                         f"artifacts (found {sorted(files)}); the training did not finish its export")
    try:
        c.create_registered_model(name, description="PVQ-VAE video autoencoder (EMA weights)")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    existing = [mv for mv in c.search_model_versions(f"name='{name}'") if mv.run_id == run_id]
    if existing:  # a rerun of the same flow (e.g. after a later task failed): no second version
        return c.get_model_version(name, existing[0].version)
    source = f"{run.info.artifact_uri.rstrip('/')}/export"
    mv = c.create_model_version(name, source, run_id=run_id, description=description)
    try:
        for k, v in tags.items():
            c.set_model_version_tag(name, mv.version, k, str(v))
        c.set_registered_model_alias(name, CHALLENGER, mv.version)
    except BaseException:
        c.delete_model_version(name, mv.version)
        raise
    return c.get_model_version(name, mv.version)


def set_champion(c, name: str, version: str) -> None:
    c.set_registered_model_alias(name, CHAMPION, version)
