# phasegate: `make demo` runs the demo phase on the embedded stack; `make test` runs every check.
# Both install what they need first (scripts/setup.sh: idempotent, pinned, cached outside the clone).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY := runtime/.venv/bin/python
export PYTHONPATH := $(CURDIR)/runtime/src

.PHONY: setup build demo test typecheck lint jest py-lint py-test cluster-build cluster-test server clean

setup:
	@scripts/setup.sh

build: setup
	@node_modules/.bin/tsc -p tsconfig.build.json

demo: build
	@scripts/demo.sh

server: build
	@bin/phasegate server

typecheck: setup
	node_modules/.bin/tsc -p tsconfig.json --noEmit

lint: setup
	node_modules/.bin/eslint --max-warnings 0 .

jest: build
	node_modules/.bin/jest --ci

py-lint: setup
	cd runtime && .venv/bin/ruff check . ../bench && .venv/bin/ruff format --check . ../bench && .venv/bin/mypy src
	cd runtime && MYPYPATH=src .venv/bin/mypy --config-file pyproject.toml ../bench/*.py

py-test: setup
	cd runtime && .venv/bin/python -m pytest -q

# The production shape on this machine (scripts/cluster/): real Temporal services on PostgreSQL, MinIO as the
# artifact store, two workers. Its binaries are built once (minutes) and cached outside the clone by version.
cluster-build: setup
	@scripts/cluster/build.sh >/dev/null

cluster-test: build cluster-build
	node_modules/.bin/jest --ci --testPathIgnorePatterns /node_modules/ --testPathPatterns test/cluster/ --testTimeout 900000

test: setup typecheck lint py-lint py-test jest cluster-test

clean:
	rm -rf lib .phasegate
