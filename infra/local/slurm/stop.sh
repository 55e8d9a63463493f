#!/usr/bin/env bash
# Stop the cluster started by start.sh STATE_DIR: cancel its jobs, then end munged, slurmctld and
# slurmd by the pids in their pid files (never by name). Safe to call twice or after a failed start.
set -uo pipefail
if [ "$#" -ne 1 ]; then echo "usage: $0 STATE_DIR" >&2; exit 2; fi
state=$1
export SLURM_CONF="$state/slurm.conf"
ctld_pid=$(cat "$state/slurm/run/slurmctld.pid" 2>/dev/null || true)
# only while this cluster's controller runs (from another namespace it is unreachable anyway)
if [ -n "$ctld_pid" ] && [ -d "/proc/$ctld_pid" ] && [ -f "$SLURM_CONF" ] && command -v squeue >/dev/null; then
  jobs=$(timeout 10 squeue -h -o '%i' 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 40); do   # bounded: 20 s for the steps to end
      [ -z "$(timeout 5 squeue -h -o '%i' 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi
stop_pidfile() {  # PIDFILE EXPECTED_COMM
  local pidfile=$1 comm=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile" 2>/dev/null || true)
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || { rm -f "$pidfile"; return 0; }
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || { rm -f "$pidfile"; return 0; }  # pid reused
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do [ -d "/proc/$pid" ] || break; sleep 0.25; done
  [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null
  rm -f "$pidfile"
}
stop_pidfile "$state/slurm/run/slurmd.pid" slurmd
stop_pidfile "$state/slurm/run/slurmctld.pid" slurmctld
stop_pidfile "$state/munge/run/munged.pid" munged
echo "slurm: cluster in $state stopped"
