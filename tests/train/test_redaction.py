"""Credentials in URIs never reach MLflow params/tags/artifacts or printed launch plans (issue 13, item 3)."""

from __future__ import annotations

import json

import pytest

from data_prep.storage import redact, redact_tree
from helpers import DEBUG_CONFIG



@pytest.mark.parametrize("uri, expected", [
    ("http://user:s3cret@127.0.0.1:5000", "http://user:***@127.0.0.1:5000"),
    ("https://tok3n@host/x", "https://***@host/x"),
    ("https://h/p?a=1&token=abc&X-Amz-Signature=ff#frag", "https://h/p?a=1&token=***&X-Amz-Signature=***#frag"),
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("MLFLOW_TRACKING_URI=http://a:b@h:1 torchrun x", "MLFLOW_TRACKING_URI=http://a:***@h:1 torchrun x"),
])
def test_redact(uri, expected):
    assert redact(uri) == expected


def test_redact_tree_keeps_structure_and_non_strings():
    tree = {"a": ["http://u:p@h/", 3, None], "b": {"c": "plain", "d": 1.5}}
    assert redact_tree(tree) == {"a": ["http://u:***@h/", 3, None], "b": {"c": "plain", "d": 1.5}}


def test_mlflow_params_tags_and_config_have_no_credentials(tmp_path):
    from mlflow.tracking import MlflowClient

    from pvq_model.train.tracking import MLflowLogger

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLflowLogger(store, "redaction", "r", artifact_root=tmp_path / "art")
    config = {"train": {"mlflow_tracking_uri": "http://alice:hunter2@127.0.0.1:5000",
                        "data_path": "https://127.0.0.1/shards?token=hunter2", "steps": 3}}
    logger.log_setup(config, {"note": "https://bob:hunter2@127.0.0.1/"},
                     {"data_source": "http://carol:hunter2@127.0.0.1/x"})
    logger.close()
    run = MlflowClient(store).get_run(logger.run_id)
    assert run.data.params["train.mlflow_tracking_uri"] == "http://alice:***@127.0.0.1:5000"
    assert run.data.params["train.data_path"] == "https://127.0.0.1/shards?token=***"
    assert run.data.params["train.steps"] == "3"
    assert run.data.tags["data_source"] == "http://carol:***@127.0.0.1/x"
    files = {p.name: json.loads(p.read_text()) for p in (tmp_path / "art").rglob("*.json")}
    assert files["config.json"]["train"]["mlflow_tracking_uri"] == "http://alice:***@127.0.0.1:5000"
    assert files["deepspeed_config.json"] == {"note": "https://bob:***@127.0.0.1/"}
    assert "hunter2" not in json.dumps(run.data.params) + json.dumps(run.data.tags) + json.dumps(files)


def test_printed_launch_plan_has_no_credentials(tmp_path):
    from pvq_model.launch.plan import LaunchRequest, format_plan, plan

    p = plan(LaunchRequest(DEBUG_CONFIG, [], tmp_path / "run", "local", nproc=2, gpu=False,
                           env={"MLFLOW_TRACKING_URI": "http://alice:hunter2@127.0.0.1:5000"}))
    assert "hunter2" in p.command  # the command that runs keeps the real URI
    text = format_plan(p)
    assert "hunter2" not in text and "http://alice:***@127.0.0.1:5000" in text
