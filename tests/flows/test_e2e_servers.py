"""End to end with real services: infra/local/up.sh starts a Prefect server, a process worker and
an MLflow server on free 127.0.0.1 ports and deploys prefect.yaml; `prefect deployment run
'train-pvq/train-pvq'` runs on the demo set; the model version is checked through MlflowClient;
then `reevaluate` runs and its run is checked. infra/local/down.sh stops the services in a
``finally``, also when an assertion fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def services(tmp_path):
    if not (BIN / "prefect").is_file() or not (BIN / "mlflow").is_file():
        pytest.skip(f"prerequisite missing: the prefect and mlflow commands in {BIN}")
    env = {**os.environ, "PVQ_SERVICES_DIR": str(tmp_path / "services"), "PVQ_MLFLOW_DIR": str(tmp_path / "mlflow"),
           "PVQ_WORK_DIR": str(tmp_path / "work"), "PREFECT_HOME": str(tmp_path / "prefect"),
           "PVQ_PYTHON_BIN": str(BIN), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    try:
        up = _run([str(ROOT / "infra/local/up.sh")], env, 240)
        assert up.returncode == 0, up.stdout + up.stderr
        values = dict(line.removeprefix("export ").split("=", 1) for line in
                      (tmp_path / "services" / "env").read_text().splitlines() if "=" in line and " " not in
                      line.removeprefix("export "))
        env.update(PREFECT_API_URL=values["PREFECT_API_URL"], MLFLOW_TRACKING_URI=values["MLFLOW_TRACKING_URI"],
                   PREFECT_API_AUTH_STRING=values["PREFECT_API_AUTH_STRING"],  # both servers require auth
                   MLFLOW_TRACKING_USERNAME=values["MLFLOW_TRACKING_USERNAME"],
                   MLFLOW_TRACKING_PASSWORD=values["MLFLOW_TRACKING_PASSWORD"])
        assert env["PREFECT_API_URL"].startswith("http://127.0.0.1:")
        assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
        yield env, tmp_path
    finally:
        down = _run([str(ROOT / "infra/local/down.sh")], env, 60)
        pids = [p.read_text() for p in (tmp_path / "services").glob("*.pid")]
        assert down.returncode == 0 and pids == [], down.stdout + down.stderr


def test_deployment_run_train_then_reevaluate(services, monkeypatch):
    env, tmp = services
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # for MlflowClient in this process
        monkeypatch.setenv(k, env[k])
    run = _run([str(BIN / "prefect"), "deployment", "run", "train-pvq/train-pvq", "--watch", "--watch-timeout", "420",
                "--param", 'overrides=["train.steps=4", "train.warmup_steps=1", "train.checkpoint_every=1000", '
                '"data.frames=[16]"]'], env, 480)
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]

    from mlflow import MlflowClient

    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    versions = c.search_model_versions("name='pvq-vae'")
    assert len(versions) == 1
    mv = c.get_model_version("pvq-vae", versions[0].version)
    assert {"challenger", "champion"} & set(mv.aliases)
    assert len(mv.tags["git_commit"]) == 40 and mv.tags["data_version"] == "v000001"
    assert float(mv.tags["eval_score"]) > 0
    train_run = c.get_run(mv.run_id)
    assert train_run.data.params["train.steps"] == "4" and train_run.data.params["name"] == "pvq-vae-debug"
    assert train_run.data.tags["git_commit"] == mv.tags["git_commit"]
    assert train_run.data.metrics["eval/overall/psnr"] == pytest.approx(float(mv.tags["eval_score"]), abs=1e-5)
    assert {"config.json", "deepspeed_config.json", "export", "evaluation"} <= {f.path for f in c.list_artifacts(mv.run_id)}
    assert any((tmp / "mlflow" / "artifacts").rglob("model.safetensors"))  # the server's local artifact store
    assert not (ROOT / "mlruns").exists()

    again = _run([str(BIN / "prefect"), "deployment", "run", "reevaluate/reevaluate", "--watch",
                  "--watch-timeout", "240"], env, 300)
    assert again.returncode == 0 and "Completed" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    exp = c.get_experiment_by_name("pvq-vae-reevaluation")
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["model_version"] == str(mv.version)
    assert runs[0].data.tags["regression"] == "false" and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["eval/score"] == pytest.approx(float(mv.tags["eval_score"]), abs=1e-5)
    assert c.get_model_version("pvq-vae", mv.version).tags["last_reevaluation_run"] == runs[0].info.run_id
