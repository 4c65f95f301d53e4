#!/usr/bin/env bash
# Property-based API test: schemathesis (PyPI) generates requests from the served OpenAPI
# document against a real `jobstats serve` with real NATS and data; it fails on any 5xx or any
# response that does not match the documented schema.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${NATS_SERVER_BIN:?set NATS_SERVER_BIN}"
BIN=${JOBSTATS_BIN:-${CARGO_TARGET_DIR:-target}/debug/jobstats}
venv=target/schemathesis-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check schemathesis==4.32.5
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
nats_port=$(free_port)
http_port=$(free_port)
"$NATS_SERVER_BIN" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >/dev/null 2>&1 &
pids+=($!)
export JOBSTATS_NATS_URL="nats://127.0.0.1:$nats_port" JOBSTATS_DB_PATH="$work/stats.db" \
  JOBSTATS_LISTEN="127.0.0.1:$http_port" JOBSTATS_JWT_HS256_SECRET="schemathesis-secret-0123456789abcdef" \
  RUST_LOG=warn
"$BIN" serve &
pids+=($!)
python3 - "$http_port" <<'PY'
import sys, time, urllib.request
for _ in range(200):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
        break
    except Exception:
        time.sleep(0.1)
PY
tenant=3f0c7f7e-8a51-4a52-9f7e-0d6a4c1b2e11
"$BIN" publish scheduled --tenant $tenant --job tokenExpiry --cron '0 */6 * * *' >/dev/null
for i in 1 2 3; do
  "$BIN" publish started --tenant $tenant --job tokenExpiry --execution "exec-$i" >/dev/null
  "$BIN" publish completed --tenant $tenant --job tokenExpiry --execution "exec-$i" --items 5 >/dev/null
done
token=$("$BIN" token --role super_admin --ttl 1h)
"$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run "http://127.0.0.1:$http_port/api/v1/openapi.json" \
  --url "http://127.0.0.1:$http_port/api/v1" \
  --header "authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples 200 --seed 1 --no-color
