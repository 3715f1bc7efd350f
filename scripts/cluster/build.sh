#!/usr/bin/env bash
# Builds what the native cluster needs, from the package registries only, cached outside the clone by version.
#
#   temporal-server, temporal-sql-tool   $CACHE/bin-temporal-<version>/  (+ the PostgreSQL schema folders)
#   minio                                $CACHE/bin-minio-<version>/
#   PostgreSQL                           Debian's package, installed when no initdb is found
#
# Go builds take ~9 minutes on 2 cores the first time; afterwards this script returns in well under a second.
# Each folder is complete only when its marker exists, so an interrupted build is redone, never half used.
# Prints the shell assignments `TEMPORAL_BIN=... MINIO_BIN=... PG_BIN=...` on stdout for cluster/up.sh.
set -euo pipefail

cache=${PHASEGATE_CACHE:-$HOME/.cache/phasegate}
# v1.32.2 and later need a newer Go than the machine's 1.26.8.
temporal_version=${TEMPORAL_VERSION:-v1.32.1}
# MinIO publishes no semver tags; this is the newest revision the Go module proxy serves (go 1.24 in its go.mod).
minio_version=${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}
mkdir -p "$cache"

say() { printf 'cluster-build: %s\n' "$*" >&2; }

exec 8>"$cache/.cluster-build.lock"
flock 8

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath
export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"

go_install() { # dest-dir module@version binary-name-out
  local dest=$1 pkg=$2 name=$3 tmp
  tmp=$(mktemp -d "$dest.XXXX")
  GOBIN="$tmp" go install -ldflags='-s -w' "$pkg"
  mv "$tmp/$(basename "${pkg%@*}")" "$dest/$name"
  rmdir "$tmp"
}

temporal_dir="$cache/bin-temporal-$temporal_version"
if [ ! -f "$temporal_dir/.phasegate-complete" ]; then
  say "building temporal-server and temporal-sql-tool $temporal_version into $temporal_dir (first time: ~9 min)"
  rm -rf "$temporal_dir" && mkdir -p "$temporal_dir"
  go_install "$temporal_dir" "go.temporal.io/server/cmd/server@$temporal_version" temporal-server
  go_install "$temporal_dir" "go.temporal.io/server/cmd/tools/sql@$temporal_version" temporal-sql-tool
  cp -r "$GOMODCACHE/go.temporal.io/server@$temporal_version/schema/postgresql/v12" "$temporal_dir/schema"
  chmod -R u+w "$temporal_dir/schema"
  touch "$temporal_dir/.phasegate-complete"
fi

minio_dir="$cache/bin-minio-$minio_version"
if [ ! -f "$minio_dir/.phasegate-complete" ]; then
  say "building minio $minio_version into $minio_dir (first time: a few minutes)"
  rm -rf "$minio_dir" && mkdir -p "$minio_dir"
  go_install "$minio_dir" "github.com/minio/minio@$minio_version" minio
  touch "$minio_dir/.phasegate-complete"
fi

pg_initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pg_initdb" ]; then
  say "installing PostgreSQL from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  pg_initdb=$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)
fi

printf 'TEMPORAL_BIN=%q\nMINIO_BIN=%q\nPG_BIN=%q\n' "$temporal_dir" "$minio_dir" "$(dirname "$pg_initdb")"
