"""`pvq demo` (the whole DAG in-process, flows.demo) on the embedded demo set, shortened."""

import re

import pytest
from typer.testing import CliRunner

from flows.cli import app


@pytest.mark.slow
def test_demo_dag(tmp_path, monkeypatch):
    monkeypatch.setenv("PVQ_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = CliRunner().invoke(app, ["demo", "--steps", "4", "--launcher", "single"], terminal_width=200)
    assert res.exit_code == 0, res.output[-3000:]
    m = re.search(r"registered pvq-vae v(\d+) \(champion v(\d+)\), score ([\d.]+) dB", res.output)
    assert m and int(m.group(1)) == 1 and int(m.group(2)) == 1 and 0 < float(m.group(3)) < 60
    from mlflow.tracking import MlflowClient

    store = re.search(r"--backend-store-uri (sqlite:///\S+)", res.output).group(1)
    client = MlflowClient(store)
    version = client.get_model_version_by_alias("pvq-vae", "champion")
    assert int(version.version) == 1 and version.tags["data_version"] == "v000001"
