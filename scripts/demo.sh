#!/usr/bin/env bash
# The demo: installs if needed, then starts the API, a worker and the dashboard on embedded
# defaults (SQLite under ./var, a folder as the broker), registers a synthetic dataset and
# submits a short pretraining and two small fine-tunes (scripts/demo.py holds the recipe).
# Set DETLAB_DATABASE_URL / DETLAB_BROKER_URL to use Postgres / Redis instead. Ctrl-C stops
# everything.
#
# Access: the API answers only requests that carry a token. The demo makes a local admin,
# demo-admin, and a token for this run, which the dashboard is signed in with and
# scripts/demo.py submits with (as DETLAB_API_TOKEN); the token is revoked when the demo
# stops. The API and the dashboard listen on 127.0.0.1 only, so that nobody else on the network
# reaches them; DETLAB_API_HOST and DETLAB_DASHBOARD_ADDRESS change that. A dashboard on
# another address is not signed in: whoever opens it signs in with a token of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
VENV=${DETLAB_VENV:-$PWD/.venv}
export DETLAB_HOME=${DETLAB_HOME:-$PWD/var}
API_HOST=${DETLAB_API_HOST:-127.0.0.1}
API_PORT=${DETLAB_API_PORT:-8000}
UI_ADDRESS=${DETLAB_DASHBOARD_ADDRESS:-127.0.0.1}
UI_PORT=${DETLAB_DASHBOARD_PORT:-8501}
ADMIN=demo-admin
LOGS=$DETLAB_HOME/logs
mkdir -p "$LOGS"

is_loopback() { [[ $1 == 127.* || $1 == localhost || $1 == ::1 ]]; }
url_host() {  # where a client on this machine reaches a server bound to $1
  case $1 in
    0.0.0.0 | ::) echo 127.0.0.1 ;;
    *:*) echo "[$1]" ;;
    *) echo "$1" ;;
  esac
}
export DETLAB_API_URL=${DETLAB_API_URL:-http://$(url_host "$API_HOST"):$API_PORT}
UI_URL=http://$(url_host "$UI_ADDRESS"):$UI_PORT
admin() { "$VENV/bin/detlab-admin" "$@" 2>>"$LOGS/admin.log"; }
unset DETLAB_API_TOKEN  # handed below to the two processes that call the API, and no other

pids=()
seed_pid=""
token_id=""
stop() {
  kill "${pids[@]}" $seed_pid 2>/dev/null || true
  wait 2>/dev/null || true
  if [[ -n $token_id ]]; then
    admin revoke-token "$token_id" \
      || echo "could not revoke the demo's token $token_id; see $LOGS/admin.log" >&2
    token_id=""
  fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$VENV/bin/python" -m backend.migrate
# The demo's admin, and a token for this run only; the expiry is a backstop for a demo that was
# killed before it could revoke its token.
token_name="demo $(date -u +%Y-%m-%dT%H:%M:%SZ) pid $$"
if ! admin create-user "$ADMIN" --role admin --exist-ok \
  || ! token=$(admin create-token "$ADMIN" --name "$token_name" --expires-days 30); then
  tail -n 5 "$LOGS/admin.log" >&2
  exit 1
fi
token_id=$(admin list-tokens "$ADMIN" | awk -F'\t' -v name="$token_name" '$3 == name { print $1 }')
# an earlier run, or an admin, may have changed demo-admin: say what the dashboard will be
read -r admin_role admin_state < <(
  admin list-users | awk -F'\t' -v name="$ADMIN" '$2 == name { print $3, $4 }'
) || true
if [[ ${admin_state:-} != active ]]; then
  echo "user $ADMIN is ${admin_state:-missing}: reactivate it (PATCH /users/{id} as another" \
    "admin), or start the demo on a fresh DETLAB_HOME" >&2
  exit 1
fi

"$VENV/bin/uvicorn" backend.main:app --host "$API_HOST" --port "$API_PORT" \
  >"$LOGS/api.log" 2>&1 &
pids+=($!)
# two CPU slots, the cores shared between them: the scratch fine-tune runs beside the
# pretraining and then beside the MoCo v2 fine-tune, instead of before both
DETLAB_WORKER_CPU_SLOTS=${DETLAB_WORKER_CPU_SLOTS:-2} \
  "$VENV/bin/celery" -A worker.celery_app worker --loglevel=INFO >"$LOGS/worker.log" 2>&1 &
pids+=($!)
# Signed in as the demo's admin only where nobody else can reach it.
if is_loopback "$UI_ADDRESS"; then
  signed_in="signed in as $ADMIN ($admin_role), with a token made for this run"
  ui_env=(env DETLAB_API_TOKEN="$token")
else
  signed_in="not signed in: each visitor signs in with a token of their own"
  ui_env=(env)
fi
"${ui_env[@]}" "$VENV/bin/streamlit" run dashboard/app.py --server.headless true \
  --server.address "$UI_ADDRESS" --server.port "$UI_PORT" \
  --browser.gatherUsageStats false >"$LOGS/dashboard.log" 2>&1 &
pids+=($!)
DETLAB_API_TOKEN=$token "$VENV/bin/python" -m scripts.demo >"$LOGS/demo.log" 2>&1 &
seed_pid=$!

exposed=""
if ! is_loopback "$API_HOST" || ! is_loopback "$UI_ADDRESS"; then
  exposed="
Listening beyond this machine over plain HTTP: tokens cross the network readable. Put a TLS
proxy in front (README, \"Users and access\")."
fi
cat <<MSG

DetLab demo is running (logs in $LOGS):
  API        $DETLAB_API_URL   (OpenAPI: $DETLAB_API_URL/docs)
  Dashboard  $UI_URL
             $signed_in
  Demo jobs: a short MoCo v2 pretraining on the unlabelled train images and two identical
  RetinaNet fine-tunes, from scratch (beside the pretraining) and from MoCo v2 (once it is
  done); leaderboard rows appear as they finish (all three within about 15 minutes on a
  2-core CPU; progress in $LOGS/demo.log and the dashboard).
Every API route but /health and the docs needs "Authorization: Bearer <token>". Tokens for
others, from $PWD (roles: viewer, member, admin; a token is shown once):
  ${VENV#"$PWD"/}/bin/detlab-admin create-user alice --role member
  ${VENV#"$PWD"/}/bin/detlab-admin create-token alice --name "alice's laptop"
The demo's own token is revoked when it stops.$exposed
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
echo "a DetLab process stopped; see $LOGS" >&2
exit 1
