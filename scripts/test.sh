#!/usr/bin/env bash
# Run the test suite (installs first if needed): ruff, ruff format --check, mypy, then pytest
# with the arguments given; `scripts/test.sh -m "not e2e"` is the fast tier (no training).
# Tests that need Postgres on 127.0.0.1:5432 or Redis on 127.0.0.1:6379 (override with
# DETLAB_TEST_POSTGRES / DETLAB_TEST_REDIS) fail, never skip, when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
VENV=${DETLAB_VENV:-$PWD/.venv}
"$VENV/bin/ruff" check backend worker dashboard tests benchmarks scripts
"$VENV/bin/ruff" format --check backend worker dashboard tests benchmarks scripts
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
