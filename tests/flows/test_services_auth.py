"""The local services (infra/local/up.sh) refuse unauthenticated requests and foreign origins, and
the served path (the CLI through the env file, MLflow with its credentials) still works.

Issue 13, item 1: one unauthenticated POST to ``create_flow_run`` made the process worker run a
command. Here the same POST gets 401, a cross-origin preflight from another origin is not allowed,
and the secret lives in a 0600 file."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from helpers import ROOT

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(url: str, method: str = "GET", body: dict | None = None, auth: str | None = None,
             headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with _OPENER.open(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def _read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.removeprefix("export ")
        if "=" in line and " " not in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    if not (BIN / "prefect").is_file() or not (BIN / "mlflow").is_file():
        pytest.skip(f"prerequisite missing: the prefect and mlflow commands in {BIN}")
    tmp = tmp_path_factory.mktemp("services")
    env = {**os.environ, "PVQ_SERVICES_DIR": str(tmp / "services"), "PVQ_MLFLOW_DIR": str(tmp / "mlflow"),
           "PVQ_WORK_DIR": str(tmp / "work"), "PREFECT_HOME": str(tmp / "prefect"), "PVQ_PYTHON_BIN": str(BIN)}
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME",
              "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    try:
        up = subprocess.run([str(ROOT / "infra/local/up.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)  # a busy host: up.sh waits PVQ_SERVICES_WAIT_S per server
        assert up.returncode == 0, up.stdout + up.stderr
        yield env, tmp / "services", _read_env(tmp / "services" / "env")
    finally:
        down = subprocess.run([str(ROOT / "infra/local/down.sh")], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr


def test_secret_and_env_file_are_private(services):
    _, state, values = services
    for name in ("secret", "env"):
        mode = stat.S_IMODE((state / name).stat().st_mode)
        assert mode == 0o600, f"{name}: mode {oct(mode)}"
    secret = (state / "secret").read_text().strip()
    assert len(secret) >= 32
    assert values["PREFECT_API_AUTH_STRING"] == f"pvq:{secret}"
    assert values["MLFLOW_TRACKING_USERNAME"] == "pvq" and values["MLFLOW_TRACKING_PASSWORD"] == secret


def test_prefect_api_refuses_unauthenticated_requests(services):
    _, _, values = services
    api, auth = values["PREFECT_API_URL"], values["PREFECT_API_AUTH_STRING"]
    assert _request(f"{api}/health")[0] == 200  # health stays open (up.sh waits on it)
    status, _ = _request(f"{api}/deployments/filter", "POST", {})
    assert status == 401
    assert _request(f"{api}/deployments/filter", "POST", {}, auth="pvq:wrong")[0] == 401
    # the reproduction of the issue: create a flow run with a command, without credentials
    cmd = {"job_variables": {"command": "sh -c 'id > /tmp/pvq-pwned'"}}
    status, _ = _request(f"{api}/deployments/00000000-0000-0000-0000-000000000000/create_flow_run", "POST", cmd)
    assert status == 401
    assert _request(f"{api}/deployments/filter", "POST", {}, auth=auth)[0] == 200


def test_prefect_cors_only_allows_its_own_origin(services):
    _, _, values = services
    api = values["PREFECT_API_URL"]
    own = api.removesuffix("/api")
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    status, headers = _request(f"{api}/deployments/filter", "OPTIONS", headers={**pre, "Origin": "http://evil.example"})
    assert headers.get("access-control-allow-origin") not in ("*", "http://evil.example"), headers
    for origin in (own, own.replace("127.0.0.1", "localhost")):  # the UI under either loopback name
        status, headers = _request(f"{api}/deployments/filter", "OPTIONS", headers={**pre, "Origin": origin})
        assert status == 200 and headers.get("access-control-allow-origin") == origin


def test_prefect_refuses_foreign_hosts(services):
    """DNS rebinding: a page whose name now resolves to 127.0.0.1 sends its own name as Host. Refused
    before auth, health included; the loopback names (any port) are served."""
    _, _, values = services
    api, auth = values["PREFECT_API_URL"], values["PREFECT_API_AUTH_STRING"]
    port = urllib.parse.urlsplit(api).port
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
        assert _request(f"{api}/deployments/filter", "POST", {}, auth=auth, headers={"Host": host})[0] == 400, host
        assert _request(f"{api}/health", headers={"Host": host})[0] == 400, host
    assert _request(f"{api}/deployments/filter", "POST", {}, auth=auth, headers={"Host": f"localhost:{port}"})[0] == 200
    assert _request(f"{api}/deployments/filter", "POST", {}, auth=auth)[0] == 200  # Host 127.0.0.1:port
    status, _ = _request(api.removesuffix("/api") + "/", headers={"Host": "evil.example", "Accept": "text/html"})
    assert status == 400  # the UI too


def _json(url: str, body: dict, auth: str):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with _OPENER.open(req, timeout=30) as r:
        return json.loads(r.read())


def test_deployment_run_with_credentials_in_a_uri_is_refused_before_it_is_stored(services):
    """Issue 13, item 3: Prefect stores a flow run's parameters; the deployments' parameter schema
    refuses a URI with a password or token (409) before the run exists."""
    _, _, values = services
    api, auth = values["PREFECT_API_URL"], values["PREFECT_API_AUTH_STRING"]
    req = urllib.request.Request(f"{api}/deployments/name/shard-data/shard-data")
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with _OPENER.open(req, timeout=30) as r:
        dep = json.loads(r.read())["id"]
    for params in ({"sources": ["https://pvq:hunter2@127.0.0.1:9/list.csv"]},
                   {"output": "s3://b/ds?X-Amz-Signature=hunter2"},
                   {"overrides": ["train.mlflow_tracking_uri=http://pvq:hunter2@127.0.0.1:9"]}):
        status, _ = _request(f"{api}/deployments/{dep}/create_flow_run", "POST", {"parameters": params}, auth=auth)
        assert status == 409, params
    runs = _json(f"{api}/flow_runs/filter", {}, auth)
    assert "hunter2" not in json.dumps(runs)


def test_mlflow_refuses_unauthenticated_requests_and_foreign_hosts(services):
    _, _, values = services
    uri = values["MLFLOW_TRACKING_URI"]
    url = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _request(f"{uri}/health")[0] == 200
    assert _request(url)[0] == 401
    assert _request(url, auth="pvq:wrong")[0] == 401
    assert _request(url, auth=f"pvq:{values['MLFLOW_TRACKING_PASSWORD']}")[0] == 200
    # DNS rebinding: a request that names another host is refused before auth
    status, _ = _request(url, auth=f"pvq:{values['MLFLOW_TRACKING_PASSWORD']}", headers={"Host": "evil.example"})
    assert status in (400, 403)
    # CORS: a foreign page gets no preflight grant, and its state-changing request is refused even
    # with the credentials; the UI's own origin is granted
    create = f"{uri}/api/2.0/mlflow/experiments/create"
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    _, headers = _request(create, "OPTIONS", headers={**pre, "Origin": "http://evil.example"})
    assert headers.get("access-control-allow-origin") not in ("*", "http://evil.example"), headers
    status, _ = _request(create, "POST", {"name": "from-evil"}, auth=f"pvq:{values['MLFLOW_TRACKING_PASSWORD']}",
                         headers={"Origin": "http://evil.example"})
    assert status == 403
    _, headers = _request(create, "OPTIONS", headers={**pre, "Origin": uri})
    assert headers.get("access-control-allow-origin") == uri, headers


def test_served_path_works_with_the_env_file(services):
    env, _, values = services
    env = {**env, **values}
    ls = subprocess.run([str(BIN / "prefect"), "deployment", "ls"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
    assert ls.returncode == 0, ls.stdout + ls.stderr
    for name in ("shard-data", "refresh-shards", "train-pvq", "reevaluate"):
        assert name in ls.stdout
    without = {k: v for k, v in env.items() if k != "PREFECT_API_AUTH_STRING"}
    without["PREFECT_HOME"] = str(Path(env["PREFECT_HOME"]).parent / "other-home")  # no profile with the secret
    denied = subprocess.run([str(BIN / "prefect"), "deployment", "ls"], cwd=ROOT, env=without, capture_output=True,
                            text=True, timeout=120)
    assert denied.returncode != 0 and "401" in denied.stdout + denied.stderr

    from mlflow import MlflowClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_USERNAME", "pvq")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", values["MLFLOW_TRACKING_PASSWORD"])
        c = MlflowClient(values["MLFLOW_TRACKING_URI"])
        exp = c.create_experiment("auth-check")
        run = c.create_run(exp)
        c.log_metric(run.info.run_id, "x", 1.5)
        assert c.get_run(run.info.run_id).data.metrics["x"] == 1.5
