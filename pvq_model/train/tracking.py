"""Run metadata and MLflow logging (rank 0 only), and the one experiment-creation function
(:func:`ensure_experiment`, also used by :mod:`flows.registry`)."""

from __future__ import annotations

import json
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


def ensure_experiment(client, name: str, artifact_root: Path | None) -> str:
    """The experiment id of ``name`` in ``client``'s store, created with ``artifact_root`` (for a
    local store: so no artifact ever lands in ``./mlruns`` of the current directory) when it does
    not exist."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if artifact_root is not None:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        location = Path(artifact_root).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


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
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        exp_id = ensure_experiment(self.client, experiment, artifact_root)
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


def open_run(cfg, out: Path, ds_config: dict, *, world: int, resumed_from: str | None,
             data_version: str | None = None) -> MLflowLogger:
    """Rank 0's MLflow run of the run directory ``out``, set up: the tracking URI is
    ``train.mlflow_tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``out/mlflow.db``; a resumed
    run (``resumed_from``: the checkpoint tag) continues its MLflow run when the store is the same
    (one run per run directory, recorded in ``out/mlflow_run.json``); the config, DeepSpeed config
    (also written to ``out/deepspeed_config.json``), git state, data version, seeds and package
    versions are logged."""
    import hashlib
    import os

    t = cfg.train
    out.mkdir(parents=True, exist_ok=True)
    (out / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=2))
    uri = t.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    run_file = out / "mlflow_run.json"
    store = hashlib.sha256(uri.encode()).hexdigest()[:16]
    prev = json.loads(run_file.read_text()) if resumed_from is not None and run_file.is_file() else {}
    logger = MLflowLogger(uri, t.mlflow_experiment, run_name=f"{cfg.name}-{out.name}",
                          artifact_root=out / "mlartifacts" if local else None,
                          resume_run_id=prev.get("run_id") if prev.get("store") == store else None)
    run_file.write_text(json.dumps({"run_id": logger.run_id, "store": store}))
    tags = {**git_state(), **data_tags(t.data_path, data_version or t.data_version),
            "seed": str(t.seed), "world_size": str(world), "resumed_from": resumed_from or "",
            **{f"version.{k}": v for k, v in package_versions().items()}}
    logger.log_setup(cfg.to_dict(), ds_config, tags)
    return logger


def data_tags(data_path: str | None, version: str | None = None) -> dict[str, str]:
    """``data_path``, ``data_version`` (the dataset's LATEST unless given) and ``data_index_sha256``
    (hash of that version's shard index, which lists every shard's sha256)."""
    if data_path is None:
        return {"data_path": "synthetic", "data_version": "synthetic", "data_index_sha256": ""}
    import hashlib

    from data_prep import manifest, storage

    version = version or manifest.latest_version(data_path) or "none"
    try:
        digest = hashlib.sha256(storage.read_bytes(storage.join(data_path, version, "index.parquet"))).hexdigest()
    except (OSError, storage.StorageError):
        digest = ""
    return {"data_path": str(data_path), "data_version": version, "data_index_sha256": digest}
