#!/bin/bash
# RSS per connected pile (issue 17: ≤ 6 KB at steady state, after the frame rings fill).
# N pile-sim BKV piles with 1 s heartbeats against one release gateway (SQLite); the gateway's
# RSS before, once all are online, and after the rings have filled (a ring holds 200 frames or
# its byte budget, whichever comes first: ~100 heartbeats and their answers).
# Usage: server/bench-memory.sh [N=5000] [FILL_SECS=130]
#   (CARGO_TARGET_DIR must hold the release build of pile-server and pile-sim)
N=${1:-5000}; FILL=${2:-130}
B=${CARGO_TARGET_DIR:-$(pwd)/target}/release
D=$(mktemp -d /tmp/mem-bench.XXXX); cd "$D"
uptime
RUST_LOG=warn $B/pile-server --http-listen 127.0.0.1:7156 --device-listen 127.0.0.1:7166 \
  --database-url "sqlite://$D/db.sqlite" --api-key benchkey > gw.log 2>&1 &
GW=$!
trap 'kill $SIM $GW 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
for i in $(seq 1 60); do curl -s -o /dev/null 127.0.0.1:7156/healthz && break; sleep 1; done
rss() { awk '/VmRSS/{print $2}' /proc/$GW/status; }
base=$(rss)
timeout $((FILL + 120)) $B/pile-sim run --server 127.0.0.1:7166 --devices "$N" --ramp 2000 --heartbeat 1 > sim.log 2>&1 &
SIM=$!
H='X-Api-Key: benchkey'
for i in $(seq 1 90); do
  n=$(curl -s -H "$H" '127.0.0.1:7156/api/v1/third/devices?online=true&size=1' | python3 -c 'import sys,json;print(json.load(sys.stdin)["data"]["total"])' 2>/dev/null)
  [ "$n" = "$N" ] && break; sleep 1; done
online=$(rss); t_online=$SECONDS
sleep "$FILL"
full=$(rss)
frames=$(curl -s -H "$H" "127.0.0.1:7156/api/v1/admin/devices/82210225000520/frames" | python3 -c 'import sys,json;print(len(json.load(sys.stdin)["data"]))' 2>/dev/null)
echo "piles online: $n; frames in the first pile's ring: $frames"
echo "RSS KB: before $base, all online $online, after ${FILL}s of 1 s heartbeats $full"
echo "per pile: online $(( (online - base) * 1024 / N )) B, steady $(( (full - base) * 1024 / N )) B"
uptime
