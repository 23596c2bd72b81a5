#!/usr/bin/env bash
# Stops exactly the daemons scripts/slurm/up.sh started (by their pidfiles), slurmd first.
set -uo pipefail
STATE=${TRLM_SLURM_DIR:-/tmp/trlm-slurm}
stop() {
  local pidfile=$1
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}
for node in n1 n2; do stop "$STATE/run/slurmd-$node.pid"; done
stop "$STATE/run/slurmctld.pid"
stop "$STATE/run/slurmdbd.pid"
stop "$STATE/mysql/mariadb.pid"
stop "$STATE/munge/munged.pid"
sed -i '/# trlm-slurm$/d' /etc/hosts 2>/dev/null || true
echo "slurm: down"
