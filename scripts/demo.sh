#!/usr/bin/env bash
# `make demo`: the demo phase (protocols/demo.json: two tiny models, three libraries, local CPU backend) on the
# embedded stack, from start to FROZEN, through the same CLI a user types. Reuses a server that is already
# running; otherwise starts one for the demo and stops it afterwards. State persists in $PHASEGATE_STATE_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export PHASEGATE_STATE_DIR=${PHASEGATE_STATE_DIR:-.phasegate}
protocol=protocols/demo.json
pg=bin/phasegate
mkdir -p "$PHASEGATE_STATE_DIR"

server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap stop_server EXIT

if ! $pg list >/dev/null 2>&1; then
  echo "== starting the embedded server (log: $PHASEGATE_STATE_DIR/server.log)"
  LOG_FORMAT=json $pg server >"$PHASEGATE_STATE_DIR/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 120); do
    if $pg list >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then echo "server exited; see $PHASEGATE_STATE_DIR/server.log" >&2; exit 1; fi
    sleep 1
  done
fi
if [ -z "${TEMPORAL_ADDRESS:-}" ]; then echo "Temporal UI: http://127.0.0.1:${PHASEGATE_UI_PORT:-8233} (filter with PhaseName / PhaseStatus)"; fi

id=$($pg id --protocol "$protocol")
if $pg status "$id" --json 2>/dev/null | grep -q '"status": "FROZEN"'; then
  echo "== $id is already FROZEN in $PHASEGATE_STATE_DIR (a frozen phase is never rerun); its report:"
else
  echo "== start"
  $pg start --protocol "$protocol"
  approver=$(node -p "require('./$protocol').budget.approvers[0]")
  reviewer=$(node -p "require('./$protocol').review.reviewers[0]")
  echo "== the run plan the reviewer reads"
  $pg plan "$id"
  echo "== gates: budget approval by $approver, review by $reviewer"
  $pg approve-budget "$id" --usd "$(node -p "require('./$protocol').budget.cap_usd")" --by "$approver" --note "make demo"
  $pg review "$id" --verdict advised --by "$reviewer" --ref "make-demo" --notes "tiny models only"
  echo "== running (progress below; Ctrl-C leaves the phase running in the server's state)"
  $pg wait "$id" --for FROZEN --timeout 600
fi

$pg status "$id"
report=$($pg status "$id" --json | node -e "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>console.log(JSON.parse(s).reportPath))")
echo
echo "== closeout report: $report"
sed -n '/^### Cross-Model Closure/,/^## 6. Cost/p' "$report" | sed '$d'
sed -n '/^## 6. Cost/,/^!\[cost\]/p' "$report" | sed '$d'
echo "pictures: $(dirname "$report")/parity.svg, $(dirname "$report")/cost.svg"
$pg verify "$id"
