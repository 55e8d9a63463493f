"""Everything MLflow-registry of the flows (plain functions over an ``MlflowClient``): ``models:/``
URIs, registration, the promotion policy and copying a run between stores.

A model version is created from the training run's ``export/`` artifact (the consolidated EMA
weights + config.yaml), tagged with what rebuilds it (git commit, dirty flag, data version, seed)
and its evaluation metrics, and gets the alias ``challenger``. If any step after the version was
created fails, the version is deleted again: nothing half-registered remains. :func:`promote`
moves ``champion`` to a version only when it scores higher on the same data.

The ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` parser is
:func:`pvq_model.eval.models.model_version`, in the lowest layer that resolves such URIs (``pvq
eval --model models:/...`` downloads through it), so the model package never imports ``flows``;
:func:`resolve_version` here is the flows' entry to it. Experiments are created by
:func:`pvq_model.train.tracking.ensure_experiment`, the trainer's own function.
"""

from __future__ import annotations

from collections.abc import Callable

CHALLENGER = "challenger"
CHAMPION = "champion"
SCORE_TAG = "eval_score"
"""Model-version tag: the score (mean PSNR over all validation clips) models are compared by."""


def client(tracking_uri: str):
    """An ``MlflowClient`` whose registry is the tracking store (telemetry is switched off by the
    flows' and the CLI's entry, :func:`flows.common.configure_env`, not here)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def resolve_version(c, model_uri: str) -> dict:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> {name, version, run_id, tags}; raises
    ``ValueError`` for a malformed URI or an alias no version has."""
    from pvq_model.eval.models import model_version

    mv = model_version(c, model_uri)
    return {"name": mv.name, "version": str(mv.version), "run_id": mv.run_id, "tags": dict(mv.tags)}


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


def promote(c, name: str, version: str, dataset: dict, rescore: Callable[[str], float], log=print) -> dict:
    """The promotion policy: alias ``champion`` moves to ``version`` only if it scores higher (tag
    :data:`SCORE_TAG`) than the current champion on the same data. The champion's recorded score
    counts when it was measured on this dataset (same path and index hash); otherwise
    ``rescore(champion_version)`` measures it now. The first version becomes champion."""
    new = c.get_model_version(name, version)
    new_score = float(new.tags[SCORE_TAG])
    champ = alias_version(c, name, CHAMPION)
    if champ is None:
        set_champion(c, name, version)
        c.set_model_version_tag(name, version, "promotion", "first champion")
        return {"promoted": True, "champion": version, "score": new_score, "previous": None}
    if str(champ.version) == str(version):
        return {"promoted": False, "champion": version, "score": new_score, "previous": version}
    same = (champ.tags.get("data_path") == dataset["data"] and champ.tags.get("data_index_sha256") == dataset["index_sha256"]
            and SCORE_TAG in champ.tags)
    champ_score = float(champ.tags[SCORE_TAG]) if same else rescore(str(champ.version))
    better = new_score > champ_score
    c.set_model_version_tag(name, version, "compared_to", f"v{champ.version}: {champ_score:.6f}")
    if better:
        set_champion(c, name, version)
        c.set_model_version_tag(name, version, "promotion", f"beat v{champ.version}")
    log(f"{name} v{version} scores {new_score:.3f} vs champion v{champ.version} {champ_score:.3f}: "
        f"{'promoted' if better else 'stays challenger'}")
    return {"promoted": better, "champion": version if better else str(champ.version), "score": new_score,
            "previous": str(champ.version), "previous_score": champ_score}


def import_run(src_uri: str, run_id: str, dst_uri: str) -> str:
    """Copy an MLflow run (params, tags, metric histories, artifacts) from one store to another
    (e.g. from the sqlite store of a network-isolated training to the server); returns the new run id."""
    import tempfile

    from mlflow.entities import Metric, Param, RunTag

    from pvq_model.train.tracking import ensure_experiment

    src, dst = client(src_uri), client(dst_uri)
    run = src.get_run(run_id)
    exp = src.get_experiment(run.info.experiment_id)
    exp_id = ensure_experiment(dst, exp.name, None)
    new = dst.create_run(exp_id, run_name=run.info.run_name, start_time=run.info.start_time)
    rid = new.info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    tags = [RunTag(k, v) for k, v in run.data.tags.items() if not k.startswith("mlflow.")]
    tags.append(RunTag("imported_from", f"{src_uri}#{run_id}"))
    metrics = [Metric(m.key, m.value, m.timestamp, m.step) for k in run.data.metrics
               for m in src.get_metric_history(run_id, k)]
    for i in range(0, max(len(params), 1), 90):
        dst.log_batch(rid, params=params[i:i + 90])
    dst.log_batch(rid, tags=tags)
    for i in range(0, len(metrics), 500):
        dst.log_batch(rid, metrics=metrics[i:i + 500])
    with tempfile.TemporaryDirectory() as tmp:
        local = src.download_artifacts(run_id, "", tmp)
        dst.log_artifacts(rid, local)
    dst.set_terminated(rid, run.info.status)
    return rid
