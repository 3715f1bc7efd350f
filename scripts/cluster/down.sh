#!/usr/bin/env bash
# Stops what scripts/cluster/up.sh DIR started, by the pid files it wrote (a pid is signalled only while its
# command line is still the one started from DIR's binaries, so a reused pid is never hit), then PostgreSQL.
#   scripts/cluster/down.sh DIR [--purge]     --purge also deletes DIR
set -euo pipefail
dir=${1:?usage: down.sh DIR [--purge]}
[ -d "$dir" ] || exit 0
dir=$(cd "$dir" && pwd)

ours() { { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null | grep -E "temporal-server|minio server" | grep -qF "$dir/"; }
pids=()
for f in "$dir"/run/*.pid; do
  [ -e "$f" ] || continue
  pid=$(cat "$f")
  if ours "$pid"; then kill "$pid" 2>/dev/null && pids+=("$pid"); fi
  rm -f "$f"
done
for _ in $(seq 1 40); do
  alive=0
  for pid in "${pids[@]}"; do ours "$pid" && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.25
done
for pid in "${pids[@]}"; do ours "$pid" && kill -KILL "$pid" 2>/dev/null; done
if [ -f "$dir/pg/data/postmaster.pid" ]; then
  pg_ctl=$(ls /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)
  runuser -u postgres -- "$pg_ctl" -D "$dir/pg/data" -m immediate stop >/dev/null 2>&1 || true
fi
if [ "${2:-}" = --purge ]; then rm -rf "$dir"; fi
