#!/usr/bin/env bash
# Start a one-node Slurm cluster (munged, slurmctld, slurmd) whose whole state lives in STATE_DIR.
#   infra/local/slurm/start.sh STATE_DIR      then   export SLURM_CONF=STATE_DIR/slurm.conf
# Run it inside infra/local/isolated.sh (with every later Slurm command in the same namespace, e.g.
# via with_cluster.sh), so no lookup leaves the machine. Needs root and the Debian packages
# slurmctld slurmd slurm-client munge. Waits (bounded: PVQ_SLURM_START_TIMEOUT s, default 60) until
# sinfo shows the node idle; on failure prints the daemon logs and exits 1. Stop with stop.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ "$#" -ne 1 ]; then echo "usage: $0 STATE_DIR" >&2; exit 2; fi
state=$(mkdir -p "$1" && cd "$1" && pwd)
timeout_s=${PVQ_SLURM_START_TIMEOUT:-60}
for bin in munged slurmctld slurmd sinfo; do
  command -v "$bin" >/dev/null || {
    echo "$bin not found: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge" >&2
    exit 1; }
done

# munge: a private key (mode 400) and socket folder (mode 755) under STATE_DIR
mkdir -p "$state"/munge/{etc,run,log,lib} "$state"/slurm/{state,spool,log,run}
chmod 700 "$state/munge/etc" "$state/munge/lib" "$state/munge/log"
chmod 755 "$state" "$state/munge" "$state/munge/run"
if [ ! -s "$state/munge/etc/munge.key" ]; then
  dd if=/dev/urandom of="$state/munge/etc/munge.key" bs=1024 count=1 status=none
fi
chmod 400 "$state/munge/etc/munge.key"
munged --force \
  --key-file="$state/munge/etc/munge.key" \
  --socket="$state/munge/run/munge.socket.2" \
  --pid-file="$state/munge/run/munged.pid" \
  --log-file="$state/munge/log/munged.log" \
  --seed-file="$state/munge/lib/munged.seed"

# slurm.conf from the template: this machine's cores and 80% of its memory
cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc: it obeys OMP_NUM_THREADS
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
sed -e "s|{{STATE_DIR}}|$state|g" -e "s|{{CPUS}}|$cpus|g" -e "s|{{MEMORY_MB}}|$mem_mb|g" \
  "$here/slurm.conf.template" > "$state/slurm.conf"
export SLURM_CONF="$state/slurm.conf"

slurmctld -i -f "$SLURM_CONF"
slurmd -N localhost -f "$SLURM_CONF"

deadline=$((SECONDS + timeout_s))
until [ "$(sinfo -h -N -o '%T' 2>/dev/null | head -n 1)" = "idle" ]; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "slurm: node not idle after ${timeout_s}s; sinfo says: $(sinfo -N 2>&1 | tail -n +2)" >&2
    for log in "$state"/slurm/log/*.log "$state"/munge/log/munged.log; do
      echo "---- $log" >&2; tail -n 30 "$log" >&2 || true
    done
    exit 1
  fi
  sleep 0.5
done
echo "slurm: cluster up (SLURM_CONF=$SLURM_CONF)"
