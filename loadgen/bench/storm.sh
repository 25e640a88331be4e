#!/usr/bin/env bash
# Connection storms, side by side in one run: the bare accept loop (pile-sim's examples/sink.rs,
# a minimal tokio server that answers both families) and the release gateway, each taking
#   wave 1: DEVICES new piles dialled at RAMP/s (a fresh database for the gateway), then
#   wave 2: the same piles reconnecting at once after the target is killed (SIGKILL) and
#           restarted at second KILL_AT; every pile redials RECONNECT s after its drop.
# Reported per wave: how fast piles connected (dial rate) and how fast they were online, i.e.
# had their first heartbeat answered (BKV piles greet with a heartbeat, which a gateway answers
# once it has registered the pile). The load average is printed before each target.
# Usage: storm.sh [DEVICES] [RAMP] [ROUNDS]   (CARGO_TARGET_DIR must hold the release build)
# Env: KILL_AT (s, default 15), DURATION (s, 40), RECONNECT (s, 3), TARGETS ('sink gateway').
set -euo pipefail
devices=${1:-10000}
ramp=${2:-20000}
rounds=${3:-1}
bin=${CARGO_TARGET_DIR:-target}/release
kill_at=${KILL_AT:-15}
reconnect=${RECONNECT:-3}
duration=${DURATION:-40}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

start_target() { # $1 = sink|gateway; prints the PID
  if [[ $1 == sink ]]; then
    "$bin/examples/sink" 127.0.0.1:17165 >>"$work/sink.log" 2>&1 &
  else
    "$bin/pile-server" --http-listen 127.0.0.1:17155 --device-listen 127.0.0.1:17165 \
      --database-url "sqlite://$work/pile.db" --api-key k --log-format json >>"$work/gw.log" 2>&1 &
  fi
  echo $!
}

wait_port() { # bounded: 10 s
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/17165) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "target did not listen" >&2
  return 1
}

one() { # $1 = sink|gateway
  rm -f "$work/pile.db"*
  local pid api=()
  pid=$(start_target "$1"); pids+=("$pid")
  wait_port
  [[ $1 == gateway ]] && api=(--api http://127.0.0.1:17155 --api-key k --server-pid "$pid")
  echo "== $1: $(uptime)"
  "$bin/pile-load" fleet --server 127.0.0.1:17165 "${api[@]}" --devices "$devices" --protocol bkv \
    --ramp "$ramp" --heartbeat 11 --reconnect-delay "$reconnect" --duration "${duration}s" \
    --source-ips 127.0.1.1-127.0.1.254 --seed 1 --json -q >"$work/$1.json" &
  local fleet=$!
  sleep "$kill_at"
  kill -9 "$pid"
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done  # gone, port free
  pid=$(start_target "$1"); pids+=("$pid")
  wait "$fleet"
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  jq -r --arg t "$1" '.waves[] | "\($t) wave \(.connection): \(.piles) piles, dialled \(.first_dial_s|.*1000|round/1000)–\(.last_connected_s|.*1000|round/1000) s = \(.connected_per_s|round) conn/s; \(.ready) online by \(.last_ready_s|.*1000|round/1000) s = \(.ready_per_s|round) piles/s"' "$work/$1.json"
  jq -r --arg t "$1" '"\($t): connect failures \(.connect_failures), gateway CPU mean \(.gateway_process.cpu_percent_mean // "n/a") % of a core, generator CPU \(.generator_process.cpu_percent_mean|round) % of a core"' "$work/$1.json"
}

for r in $(seq "$rounds"); do
  echo "# round $r"
  for t in ${TARGETS:-sink gateway}; do one "$t"; done
done
