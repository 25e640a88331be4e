#!/usr/bin/env bash
# pile-load against wrk and ab on the gateway's device-status route
# (GET /api/v1/third/devices/{id}), one release gateway on a temp SQLite database with one
# pile-sim pile registered and online for the whole run. Runs compare.sh (ROUNDS rounds of
# SECONDS s at 32 connections), then ab and pile-load --format ab one after the other.
# Usage: gateway.sh [ROUNDS] [SECONDS]   (CARGO_TARGET_DIR must hold the release build)
set -euo pipefail
rounds=${1:-6}
secs=${2:-10}
bin=${CARGO_TARGET_DIR:-target}/release
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
"$bin/pile-server" --http-listen 127.0.0.1:17255 --device-listen 127.0.0.1:17265 \
  --database-url "sqlite://$work/pile.db" --api-key k --log-format json >"$work/gw.log" 2>&1 &
pids+=($!)
sleep 1
"$bin/pile-sim" run --server 127.0.0.1:17265 --devices 1 --first-id 82210225000520 >"$work/sim.log" 2>&1 &
pids+=($!)
url=http://127.0.0.1:17255/api/v1/third/devices/82210225000520
for _ in $(seq 100); do   # bounded: 10 s for the pile to register
  [[ $(curl -s -H 'X-Api-Key: k' "$url" | jq -r '.data.online // .online // empty' 2>/dev/null) == true ]] && break
  sleep 0.1
done
curl -s -H 'X-Api-Key: k' "$url"; echo
echo "== compare.sh: $(uptime)"
HEADER='X-Api-Key: k' "$here/compare.sh" "$url" "$rounds" "$secs" 32 "$bin/pile-load"
echo "== ab: $(uptime)"
/usr/bin/time -f 'ab CPU %U user %S sys' ab -q -k -n 100000 -c 32 -H 'X-Api-Key: k' "$url" 2>&1 |
  grep -E 'Complete requests|Failed requests|Non-2xx|Requests per second|Time per request|CPU'
echo "== pile-load --format ab: $(uptime)"
/usr/bin/time -f 'pile-load CPU %U user %S sys' "$bin/pile-load" http -q --format ab -k -n 100000 -c 32 \
  -H 'X-Api-Key: k' "$url" 2>&1 |
  grep -E 'Complete requests|Failed requests|Non-2xx|Requests per second|Time per request|CPU'
