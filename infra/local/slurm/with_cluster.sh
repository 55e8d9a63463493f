#!/usr/bin/env bash
# Bring up the one-node cluster in STATE_DIR, run CMD with SLURM_CONF exported, and always stop the
# cluster afterwards (also when CMD fails or the script is interrupted); exits with CMD's status.
# Use it inside the isolated namespace, so daemons, jobs and clients share one private loopback:
#   infra/local/isolated.sh infra/local/slurm/with_cluster.sh STATE_DIR CMD [ARGS...]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "$#" -lt 2 ]; then echo "usage: $0 STATE_DIR CMD [ARGS...]" >&2; exit 2; fi
state=$(mkdir -p "$1" && cd "$1" && pwd); shift
trap '"$here/stop.sh" "$state"' EXIT
trap 'exit 143' TERM INT
"$here/start.sh" "$state" || exit 1
export SLURM_CONF="$state/slurm.conf"
"$@"
