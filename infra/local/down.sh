#!/usr/bin/env bash
# Stop the services started by infra/local/up.sh: exactly the process groups whose leaders' pids
# are in PVQ_SERVICES_DIR (default .cache/services), SIGTERM then SIGKILL after a grace period.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${PVQ_SERVICES_DIR:-$ROOT/.cache/services}
BIN=${PVQ_PYTHON_BIN:-$ROOT/.venv/bin}
export PREFECT_HOME=${PREFECT_HOME:-$ROOT/.cache/prefect}
stopped=0
for name in prefect-worker mlflow-server prefect-server; do
  f="$STATE/$name.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    # the group may outlive its leader (e.g. a flow run of the worker): stop what is left
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stopped $name (pid $pid)"
    stopped=$((stopped + 1))
  fi
  rm -f "$f"
done
rm -f "$STATE/env"
"$BIN/prefect" --no-prompt config unset PREFECT_API_URL PREFECT_API_AUTH_STRING >/dev/null 2>&1 || true
[ "$stopped" -gt 0 ] || echo "nothing running (no live pid files in $STATE)"
exit 0
