#!/bin/bash
# Read-model figures side by side with /healthz on the same gateway: 2,000 pile-sim BKV piles,
# one charging order, SQLite, wrk -t2 -c32 -d10s per route.
# Usage: server/bench-readmodel.sh   (CARGO_TARGET_DIR must hold the release build of
#   pile-server and pile-sim; wrk from apt)
B=${CARGO_TARGET_DIR:-$(pwd)/target}/release
rm -rf /tmp/rm-bench && mkdir -p /tmp/rm-bench && cd /tmp/rm-bench
uptime
RUST_LOG=warn $B/pile-server --http-listen 127.0.0.1:7155 --device-listen 127.0.0.1:7165 --database-url sqlite:///tmp/rm-bench/db.sqlite --api-key benchkey > gw.log 2>&1 &
GW=$!; echo $GW > gw.pid
for i in $(seq 1 60); do curl -s -o /dev/null 127.0.0.1:7155/healthz && break; sleep 1; done
timeout 200 $B/pile-sim run --server 127.0.0.1:7165 --devices 2000 --ramp 1000 > sim.log 2>&1 &
SIM=$!; echo $SIM > sim.pid
H='X-Api-Key: benchkey'
for i in $(seq 1 90); do
  n=$(curl -s -H "$H" '127.0.0.1:7155/api/v1/third/devices?online=true&size=1' | python3 -c 'import sys,json;print(json.load(sys.stdin)["data"]["total"])' 2>/dev/null)
  [ "$n" = "2000" ] && break; sleep 1; done
echo "online=$n"
curl -s -H "$H" -H 'Content-Type: application/json' -X POST 127.0.0.1:7155/api/v1/third/devices/82210225000520/charge -d '{"port_no":1,"charge_mode":1,"duration":3600,"amount":500,"price_per_kwh":150,"service_fee":50,"order_no":"bench-1"}'; echo
sleep 4
curl -s -H "$H" 127.0.0.1:7155/api/v1/third/orders/bench-1 | head -c 200; echo
for p in /healthz /api/v1/third/devices/82210225000521 '/api/v1/third/devices?page=3&size=50' /api/v1/third/orders/bench-1; do
  echo "== $p"; wrk -t2 -c32 -d10s -H "$H" "http://127.0.0.1:7155$p" | grep -E "Requests/sec|Latency|Non-2xx"
done
uptime
kill $SIM; kill $GW
