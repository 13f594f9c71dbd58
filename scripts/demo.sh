#!/usr/bin/env bash
# The demo: installs if needed, then starts the API, a worker and the dashboard on embedded
# defaults (SQLite under ./var, a folder as the broker), registers a synthetic dataset and
# submits a short pretraining and two small fine-tunes (scripts/demo.py holds the recipe).
# Set DETLAB_DATABASE_URL / DETLAB_BROKER_URL to use Postgres / Redis instead. Ctrl-C stops
# everything.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
VENV=${DETLAB_VENV:-$PWD/.venv}
export DETLAB_HOME=${DETLAB_HOME:-$PWD/var}
API_PORT=${DETLAB_API_PORT:-8000}
UI_PORT=${DETLAB_DASHBOARD_PORT:-8501}
export DETLAB_API_URL=${DETLAB_API_URL:-http://127.0.0.1:$API_PORT}
LOGS=$DETLAB_HOME/logs
mkdir -p "$LOGS"

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

"$VENV/bin/python" -m backend.migrate
"$VENV/bin/uvicorn" backend.main:app --host 127.0.0.1 --port "$API_PORT" >"$LOGS/api.log" 2>&1 &
pids+=($!)
"$VENV/bin/celery" -A worker.celery_app worker --loglevel=INFO >"$LOGS/worker.log" 2>&1 &
pids+=($!)
"$VENV/bin/streamlit" run dashboard/app.py --server.headless true --server.port "$UI_PORT" \
  --browser.gatherUsageStats false >"$LOGS/dashboard.log" 2>&1 &
pids+=($!)
"$VENV/bin/python" -m scripts.demo >"$LOGS/demo.log" 2>&1 &

cat <<MSG

DetLab demo is running (logs in $LOGS):
  API        $DETLAB_API_URL   (OpenAPI: $DETLAB_API_URL/docs)
  Dashboard  http://127.0.0.1:$UI_PORT
  Demo jobs: a short MoCo v2 pretraining on the unlabelled train images, then two identical
  Faster R-CNN fine-tunes, from scratch and from MoCo v2; leaderboard rows appear as they
  finish (all three within about 15 minutes on a 2-core CPU; progress in $LOGS/demo.log and
  the dashboard).
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
echo "a DetLab process stopped; see $LOGS" >&2
exit 1
