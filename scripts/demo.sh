#!/usr/bin/env bash
# `make demo`: the demo phase (protocols/demo.json: two tiny models, three libraries, local CPU backend) on the
# embedded stack, from start to FROZEN, through the same CLI a user types. Reuses a server that is already
# running; otherwise starts one for the demo and stops it afterwards. State persists in $PHASEGATE_STATE_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export PHASEGATE_STATE_DIR=${PHASEGATE_STATE_DIR:-.phasegate}
# The demo people's private keys live in the state folder; a real approver keeps theirs in ~/.config/phasegate/keys.
export PHASEGATE_KEYS_DIR=${PHASEGATE_KEYS_DIR:-$(realpath -m "$PHASEGATE_STATE_DIR")/keys}
pg=bin/phasegate
mkdir -p "$PHASEGATE_STATE_DIR"

# The demo protocol runs from a copy in the state folder, beside its roster: each person's public key, from
# their key (made once). The roster's keys are part of the protocol hash, so a new state folder (new keys) is a
# new demo phase, and nothing is written into the repository.
demo_dir=$PHASEGATE_STATE_DIR/demo-protocol
mkdir -p "$demo_dir/people"
cp protocols/demo.json "$demo_dir/demo.json"
cp -r protocols/prompts protocols/pricing "$demo_dir/"
protocol=$demo_dir/demo.json
approver=$(node -p "require('./protocols/demo.json').budget.approvers[0]")
reviewer=$(node -p "require('./protocols/demo.json').review.reviewers[0]")
for person in "$approver" "$reviewer"; do
  $pg keys show "$person" >/dev/null 2>&1 || $pg keys new "$person" >/dev/null
done
roster=$demo_dir/$(node -p "require('./protocols/demo.json').people")
node -e 'const [file, ...pairs] = process.argv.slice(1); const people = {};
  for (let i = 0; i < pairs.length; i += 2) people[pairs[i]] = pairs[i + 1];
  require("fs").writeFileSync(file, JSON.stringify(people, null, 2) + "\n");' \
  "$roster" "$approver" "$($pg keys show "$approver")" "$reviewer" "$($pg keys show "$reviewer")"
echo "== people: $approver and $reviewer, keys in $PHASEGATE_KEYS_DIR, roster $roster"

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
# The gate console: each demo person signs in with their bearer token (issued once, kept beside their key).
for person in "$approver" "$reviewer"; do
  token_file=$PHASEGATE_KEYS_DIR/$person.token
  if [ ! -s "$token_file" ]; then (umask 077; $pg tokens issue "$person" 2>/dev/null >"$token_file"); fi
done
echo "Gate console: http://127.0.0.1:${PHASEGATE_HTTP_PORT:-8787}/console (sign in with a token from $PHASEGATE_KEYS_DIR/NAME.token; import NAME.key to decide)"

id=$($pg id --protocol "$protocol")
if $pg status "$id" --json 2>/dev/null | grep -q '"status": "FROZEN"'; then
  echo "== $id is already FROZEN in $PHASEGATE_STATE_DIR (a frozen phase is never rerun); its report:"
else
  echo "== start"
  $pg start --protocol "$protocol"
  echo "== the run plan the reviewer reads"
  $pg plan "$id"
  echo "== gates: budget approval by $approver, review by $reviewer (each signed with their own key)"
  $pg approve-budget "$id" --usd "$(node -p "require('./protocols/demo.json').budget.cap_usd")" --by "$approver" --note "make demo"
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
