#!/bin/bash
# SIGTERM with N connected piles (issue 17): time from the signal until the gateway process exits.
# Usage: server/bench-shutdown.sh [N=10000]   (WAIT=s after all are online, default 3; release build in target/)
N=${1:-10000}
ulimit -n 20000
B=${CARGO_TARGET_DIR:-$(pwd)/target}/release
D=$(mktemp -d /tmp/shut.XXXX); cd $D
RUST_LOG=warn,pile_server::app=info $B/pile-server --http-listen 127.0.0.1:7158 --device-listen 127.0.0.1:7168 --database-url "sqlite://$D/db.sqlite" --api-key k > gw.log 2>&1 &
GW=$!
for i in $(seq 1 60); do curl -s -o /dev/null 127.0.0.1:7158/healthz && break; sleep 0.5; done
timeout 120 $B/pile-sim run --server 127.0.0.1:7168 --devices $N --ramp 20000 --heartbeat 11 > sim.log 2>&1 &
SIM=$!
for i in $(seq 1 90); do
  n=$(curl -s -H 'X-Api-Key: k' '127.0.0.1:7158/api/v1/third/devices?online=true&size=1' | python3 -c 'import sys,json;print(json.load(sys.stdin)["data"]["total"])' 2>/dev/null)
  [ "$n" = "$N" ] && break; sleep 1; done
sleep ${WAIT:-3}
s=$(ls /proc/$GW/fd | wc -l)
uptime
t0=$(date +%s.%N); kill -TERM $GW; wait $GW; rc=$?; t1=$(date +%s.%N)
echo "online $n, gateway fds $s, SIGTERM → exit $(echo "$t1 - $t0" | bc) s (exit code $rc)"
grep -a "shutdown:\|gateway stopped" gw.log | sed "s/\x1b\[[0-9;]*m//g" | cut -c1-140
kill $SIM 2>/dev/null; wait 2>/dev/null; rm -rf $D
