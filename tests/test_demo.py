"""`pvq demo` end to end on the embedded demo set, shortened: shard -> train -> reconstruct."""

import re

import pytest
from typer.testing import CliRunner

from pvq_model.cli import app


@pytest.mark.slow
def test_demo_pipeline(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--steps", "6"], terminal_width=200)
    assert res.exit_code == 0, res.output[-3000:]
    assert (tmp_path / "shards" / "LATEST").is_file()
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    recon = sorted((tmp_path / "recon" / "trained").glob("*.mp4"))
    assert len(recon) == 5
    psnrs = [float(v) for v in re.findall(r"│\s+([\d.]+)\s+│\s+[\d.]+\s+│\s+absent", res.output)]
    assert len(psnrs) == 10 and all(0 < p < 60 for p in psnrs)
    # the training run records the dataset version it trained on
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("pvq-vae").experiment_id])
    assert run.data.tags["data_version"] == "v000001"
    assert len(run.data.tags["data_index_sha256"]) == 64
