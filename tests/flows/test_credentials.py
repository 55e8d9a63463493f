"""No secret is persisted (issue 13, item 3): URIs with a password, token or secret query value are
refused where they would be stored - every string parameter of every flow (the deployments'
parameter schema, checked by Prefect before it stores a flow run, and the flow's own validation) and
every argument of the ``pvq`` command. Credentials go in the environment. The served check (a 409
from a real Prefect server) is in test_services_auth.py."""

from __future__ import annotations

import re

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, validate
from typer.testing import CliRunner

from data_prep.storage import NO_CREDENTIALS_PATTERN, has_credentials, redact
from flows.ablate import ablate_flow
from flows.cli import app
from flows.reevaluate import reevaluate
from flows.refresh_shards import refresh_shards
from flows.shard_data import shard_data
from flows.train_pvq import train_pvq

FLOWS = (shard_data, refresh_shards, train_pvq, reevaluate, ablate_flow)
SECRET = ["http://pvq:hunter2@127.0.0.1:5000", "https://hunter2@127.0.0.1/list.csv",
          "s3://bucket/ds?X-Amz-Signature=hunter2&X-Amz-Date=1", "https://h/x.mp4?a=1&TOKEN=hunter2#f",
          "train.mlflow_tracking_uri=http://u:hunter2@127.0.0.1:5000",
          "http://127.0.0.1/p?next=http://u:hunter2@127.0.0.1/"]  # nested in a query: refused as well
PLAIN = ["demo", "configs/debug.yaml", "s3://bucket/ds", "sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000",
         "models:/pvq-vae@champion", "https://h/x.mp4?key_frame=1&tokens=2", "https://h/x.mp4#token=1",
         "train.steps=20", "user@example.com", "data.frames=[16]"]


@pytest.mark.parametrize("text", SECRET + PLAIN)
def test_the_schema_pattern_and_the_check_agree_with_redact(text):
    refused = has_credentials(text)
    assert refused == (text in SECRET)
    assert (re.search(NO_CREDENTIALS_PATTERN, text) is None) == refused
    if redact(text) != text:  # everything redact hides is refused
        assert refused
    assert "(?i)" not in NO_CREDENTIALS_PATTERN  # no inline flags: a JSON-schema / JavaScript pattern too


def _string_params(schema: dict) -> dict[str, bool]:
    """Parameter name -> whether it is a list, for every parameter that takes strings."""
    out = {}
    for name, prop in schema["properties"].items():
        for s in prop.get("anyOf", [prop]):
            if s.get("type") == "string" or (s.get("type") == "array" and s.get("items", {}).get("type") == "string"):
                out[name] = s["type"] == "array"
    return out


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_string_parameter_of_every_flow_refuses_credentials(flow):
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    params = _string_params(schema)
    assert params
    for name, is_list in params.items():
        with pytest.raises(ValidationError):  # what the server checks before it stores the run
            validate({name: [SECRET[0]] if is_list else SECRET[0]}, schema, raise_on_error=True)
        validate({name: ["demo"] if is_list else "demo"}, schema, raise_on_error=True)
    name, is_list = next(iter(params.items()))
    with pytest.raises(Exception) as e:  # an in-process call: refused when the flow starts, message redacted
        flow.validate_parameters({name: [SECRET[0]] if is_list else SECRET[0]})
    assert "hunter2" not in str(e.value) and "MLFLOW_TRACKING_USERNAME" in str(e.value)


@pytest.mark.parametrize("args", [
    ["data", "shard", "-s", "https://pvq:hunter2@127.0.0.1:9/list.csv", "--out", "/nonexistent/out"],
    ["train", "--dry-run", "--set", "train.mlflow_tracking_uri=http://pvq:hunter2@127.0.0.1:9"],
    ["reproduce", "models:/pvq-vae@champion", "--tracking-uri", "http://127.0.0.1:9?token=hunter2"],
])
def test_pvq_refuses_an_argument_with_credentials_before_running_anything(args):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert "carries credentials" in res.output and "MLFLOW_TRACKING_PASSWORD" in res.output
    assert "hunter2" not in res.output
