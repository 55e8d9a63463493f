"""Flow ``reevaluate`` (scheduled): the champion on the latest validation shards, a new MLflow
run linked to the model version, and a regression flag."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.common import (MODEL_NAME, ParamStr, configure_env, default_shards, default_tracking_uri, project_path,
                          work_dir)
from flows.tasks import check_dataset, evaluate_model, log_reevaluation, resolve_model_version


@flow(name="reevaluate", log_prints=True)
def reevaluate(model_uri: ParamStr = f"models:/{MODEL_NAME}@champion", data: ParamStr | None = None,
               tracking_uri: ParamStr | None = None, tolerance_db: float = 0.5) -> dict:
    """Evaluate ``model_uri`` on the latest version of ``data`` (default PVQ_WORK_DIR/shards/demo)
    and log a run in the ``pvq-vae-reevaluation`` experiment; ``regression`` is True when the score
    fell more than ``tolerance_db`` below the one recorded at registration."""
    configure_env()
    tracking_uri = tracking_uri or default_tracking_uri()
    data = project_path(data or default_shards())
    mv = resolve_model_version(tracking_uri, model_uri)
    dataset = check_dataset(data)
    out = work_dir() / "reevaluations" / f"{mv['name']}-v{mv['version']}-{dataset['version']}"
    summary = evaluate_model(f"models:/{mv['name']}/{mv['version']}", data, str(out), dataset["version"], tracking_uri)
    res = log_reevaluation(tracking_uri, mv, dataset, summary, str(out), tolerance_db)
    print(f"{mv['name']} v{mv['version']} on {dataset['version']}: {res['score']:.3f} dB "
          f"(registered {res['recorded_score']:.3f}); regression={res['regression']}; run {res['run_id']}")
    return {**res, "model_version": mv["version"], "data_version": dataset["version"], "eval_dir": str(Path(out))}
