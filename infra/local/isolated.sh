#!/usr/bin/env bash
# Run a command in a private network namespace where only loopback exists, with a private
# /etc/hosts that resolves localhost, ::1 and ::ffff:127.0.0.1 locally.
#
# Why: torch's c10d store resolves "::ffff:127.0.0.1" and "::1" by name; on hosts whose /etc/hosts
# has no IPv6 lines that becomes a DNS query off the machine (DESIGN.md §5). Inside this namespace
# nothing can leave the machine, and every name the distributed stack looks up resolves from the
# private hosts file. Needs root (or user namespaces). Usage: infra/local/isolated.sh CMD [ARGS...]
set -euo pipefail
if [ "$#" -eq 0 ]; then echo "usage: $0 CMD [ARGS...]" >&2; exit 2; fi
hosts=$(mktemp /tmp/pvq-hosts.XXXXXX)
trap 'rm -f "$hosts"' EXIT
cat > "$hosts" <<HOSTS
127.0.0.1 localhost $(hostname)
::1 localhost ip6-localhost ip6-loopback
::ffff:127.0.0.1 localhost
HOSTS
chmod 644 "$hosts"
unshare --net --mount bash -c '
  set -e
  ip link set lo up
  ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true
  mount --bind "$0" /etc/hosts
  export GLOO_SOCKET_IFNAME=lo NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
  exec "$@"' "$hosts" "$@"
