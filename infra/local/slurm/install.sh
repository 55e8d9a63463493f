#!/usr/bin/env bash
# Install the Debian packages of the one-node test cluster (root; ~10 s). No-op when present.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
   && command -v munged >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "slurm packages missing and not root: sudo $0" >&2; exit 1
fi
pkgs="slurmctld slurmd slurm-client munge"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; }
