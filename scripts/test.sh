#!/usr/bin/env bash
# Run the whole test suite (installs first if needed). Needs Postgres on 127.0.0.1:5432 and
# Redis on 127.0.0.1:6379 (override with DETLAB_TEST_POSTGRES / DETLAB_TEST_REDIS); the run
# fails, never skips, when either is missing. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
VENV=${DETLAB_VENV:-$PWD/.venv}
"$VENV/bin/ruff" check backend worker dashboard tests benchmarks scripts
"$VENV/bin/ruff" format --check backend worker dashboard tests benchmarks scripts
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
