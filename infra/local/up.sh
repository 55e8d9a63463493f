#!/usr/bin/env bash
# Start the local services of the pipeline on 127.0.0.1 (free ports unless given):
#   - a Prefect server (API + UI), its database in PREFECT_HOME (default .cache/prefect)
#   - an MLflow server: sqlite backend store + local artifact store (default .cache/mlflow)
#   - a Prefect process worker on the work pool "pvq-process", with MLFLOW_TRACKING_URI set
# then create the work pool, deploy prefect.yaml (all five deployments) and print the URLs.
# Process ids, logs and an env file go to PVQ_SERVICES_DIR (default .cache/services);
# infra/local/down.sh stops exactly those processes.
#
# Both servers require authentication. A random secret is generated on the first start and kept in
# PVQ_SERVICES_DIR/secret (mode 0600); the Prefect API takes HTTP basic auth "pvq:SECRET"
# (PREFECT_SERVER_API_AUTH_STRING), MLflow runs its basic-auth app with the admin user "pvq" and the
# same password. The worker gets the credentials in its environment, the CLI through the env file
# (mode 0600). CORS is restricted to each server's own origin. Both check the Host header (DNS
# rebinding): MLflow with --allowed-hosts, Prefect through infra/local/prefect_server.py, which serves
# Prefect's app as `prefect server start` does, behind Starlette's TrustedHostMiddleware.
#
# Environment (all optional): PREFECT_PORT, MLFLOW_PORT, PREFECT_HOME, PVQ_SERVICES_DIR,
# PVQ_MLFLOW_DIR, PVQ_WORK_DIR (flow outputs, default .cache/work), PVQ_PYTHON_BIN (default .venv/bin),
# PVQ_SERVICES_WAIT_S (seconds to wait for each server's health check, default 120).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${PVQ_PYTHON_BIN:-$ROOT/.venv/bin}
STATE=${PVQ_SERVICES_DIR:-$ROOT/.cache/services}
MLDIR=${PVQ_MLFLOW_DIR:-$ROOT/.cache/mlflow}
export PVQ_ROOT=$ROOT
export PVQ_WORK_DIR=${PVQ_WORK_DIR:-$ROOT/.cache/work}
export PREFECT_HOME=${PREFECT_HOME:-$ROOT/.cache/prefect}
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true
export PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT=false
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 HF_HUB_OFFLINE=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
unset PREFECT_API_URL MLFLOW_TRACKING_URI PREFECT_API_AUTH_STRING MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD

mkdir -p "$STATE/logs" "$MLDIR/artifacts" "$PREFECT_HOME" "$PVQ_WORK_DIR"
chmod 700 "$STATE"
for name in prefect-server mlflow-server prefect-worker; do
  if [ -f "$STATE/$name.pid" ] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
    echo "error: $name is already running (pid $(cat "$STATE/$name.pid")); run infra/local/down.sh first" >&2
    exit 1
  fi
done

free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PREFECT_PORT=${PREFECT_PORT:-$(free_port)}
MLFLOW_PORT=${MLFLOW_PORT:-$(free_port)}
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"

# The shared secret: generated once, readable by this user only. MLflow's auth store keeps the
# admin password it was first started with, so a new secret starts a new auth store.
umask 077
if [ ! -s "$STATE/secret" ]; then
  "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$STATE/secret"
  rm -f "$MLDIR/auth.db"
fi
chmod 600 "$STATE/secret"
SECRET=$(cat "$STATE/secret")
cat > "$STATE/mlflow_auth.ini" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$MLDIR/auth.db
admin_username = pvq
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# without the cache every request re-runs PBKDF2 on the password (seconds per request on a busy
# 2-core machine); one worker, so no other process can hold a stale entry
auth_cache_ttl_seconds = 60
INI
umask 022
export PREFECT_API_AUTH_STRING="pvq:$SECRET"
export MLFLOW_TRACKING_USERNAME=pvq MLFLOW_TRACKING_PASSWORD="$SECRET"

# start NAME CMD...: in its own session (so down.sh can stop the whole process group), pid recorded
start() {
  local name=$1; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/$name.pid"
}

# wait_http NAME URL SECONDS: until URL answers 200, or fail with the log's tail
wait_http() {
  local name=$1 url=$2 limit=$3
  if ! "$BIN/python" - "$url" "$limit" <<'PY'
import sys, time, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
end = time.time() + limit
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
while time.time() < end:
    try:
        if opener.open(url, timeout=2).status == 200:
            sys.exit(0)
    except Exception:
        time.sleep(0.5)
sys.exit(1)
PY
  then
    echo "error: $name did not answer at $url within ${limit}s; log $STATE/logs/$name.log:" >&2
    tail -20 "$STATE/logs/$name.log" >&2
    "$ROOT/infra/local/down.sh" >&2 || true
    exit 1
  fi
}

PREFECT_SERVER_API_AUTH_STRING="pvq:$SECRET" \
PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS="http://127.0.0.1:$PREFECT_PORT,http://localhost:$PREFECT_PORT" \
  start prefect-server "$BIN/python" "$ROOT/infra/local/prefect_server.py" --host 127.0.0.1 --port "$PREFECT_PORT" \
  --allowed-hosts 127.0.0.1,localhost
MLFLOW_AUTH_CONFIG_PATH="$STATE/mlflow_auth.ini" MLFLOW_AUTH_ADMIN_PASSWORD="$SECRET" \
MLFLOW_FLASK_SERVER_SECRET_KEY="$("$BIN/python" -c 'import secrets; print(secrets.token_hex(32))')" \
  start mlflow-server "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
  --app-name basic-auth --allowed-hosts "127.0.0.1:$MLFLOW_PORT,localhost:$MLFLOW_PORT" \
  --cors-allowed-origins "http://127.0.0.1:$MLFLOW_PORT,http://localhost:$MLFLOW_PORT" \
  --backend-store-uri "sqlite:///$MLDIR/mlflow.db" --artifacts-destination "$MLDIR/artifacts"
wait_http prefect-server "$PREFECT_API_URL/health" "${PVQ_SERVICES_WAIT_S:-120}"
wait_http mlflow-server "$MLFLOW_TRACKING_URI/health" "${PVQ_SERVICES_WAIT_S:-120}"

cd "$ROOT"
"$BIN/prefect" --no-prompt work-pool create pvq-process --type process --overwrite >"$STATE/logs/deploy.log" 2>&1
"$BIN/prefect" --no-prompt deploy --all >>"$STATE/logs/deploy.log" 2>&1 || {
  echo "error: prefect deploy failed; log $STATE/logs/deploy.log:" >&2; tail -30 "$STATE/logs/deploy.log" >&2
  "$ROOT/infra/local/down.sh" >&2 || true; exit 1; }
PREFECT_WORKER_QUERY_SECONDS=${PREFECT_WORKER_QUERY_SECONDS:-5} \
  start prefect-worker "$BIN/prefect" worker start --pool pvq-process --type process --name "pvq-worker-$PREFECT_PORT"

umask 077
cat > "$STATE/env" <<ENV
export PREFECT_HOME=$PREFECT_HOME
export PREFECT_API_URL=$PREFECT_API_URL
export PREFECT_API_AUTH_STRING=$PREFECT_API_AUTH_STRING
export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI
export MLFLOW_TRACKING_USERNAME=$MLFLOW_TRACKING_USERNAME
export MLFLOW_TRACKING_PASSWORD=$MLFLOW_TRACKING_PASSWORD
export PVQ_WORK_DIR=$PVQ_WORK_DIR
export PVQ_SERVICES_DIR=$STATE PVQ_MLFLOW_DIR=$MLDIR
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true
ENV
chmod 600 "$STATE/env"
umask 022
# the profile in this PREFECT_HOME points at the server too (for shells that only set PREFECT_HOME);
# it holds the API auth string, so the profiles file is made readable by this user only
"$BIN/prefect" --no-prompt config set "PREFECT_API_URL=$PREFECT_API_URL" "PREFECT_API_AUTH_STRING=$PREFECT_API_AUTH_STRING" >/dev/null
chmod 600 "$PREFECT_HOME/profiles.toml" 2>/dev/null || true

echo "Prefect UI/API : http://127.0.0.1:$PREFECT_PORT   (API $PREFECT_API_URL)"
echo "MLflow UI      : $MLFLOW_TRACKING_URI   (store $MLDIR)"
echo "credentials    : user pvq, password in $STATE/secret (mode 0600); both servers answer 401 without them"
echo "worker         : pool pvq-process, log $STATE/logs/prefect-worker.log"
echo "deployments    : shard-data/shard-data refresh-shards/refresh-shards train-pvq/train-pvq ablate/ablate reevaluate/reevaluate"
echo "next           : source $STATE/env && prefect deployment run 'train-pvq/train-pvq'"
echo "stop           : infra/local/down.sh"
