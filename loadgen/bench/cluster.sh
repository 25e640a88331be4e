#!/usr/bin/env bash
# Issue #17: three release gateway instances on one PostgreSQL, piles spread over them the way
# an L4 balancer would (three pile-sim processes, each dialling its own instance first and the
# others as backups: A,B,C / B,C,A / C,A,B), then one instance killed with SIGKILL.
# Reported: piles per instance before the kill, and the failover time — from the SIGKILL until
# the survivors hold every pile again (the sum of their /admin/stats active_sessions), which is
# the simulator's reconnect delay plus the gateway's takeover.
# Usage: cluster.sh [DEVICES] [RAMP]   (CARGO_TARGET_DIR must hold the release build of
#        pile-server and pile-sim; PostgreSQL at PG_URL, default postgres://postgres@127.0.0.1:5432)
# Env: BUILD (release, or debug for a smoke run), RECONNECT (s, default 1), RENEW (lease renew, s, default 2), TIMEOUT (s, default 90).
# Every wait is bounded; every process started here is killed on exit and the database dropped.
set -euo pipefail
devices=${1:-3000}
ramp=${2:-1000}
bin=${CARGO_TARGET_DIR:-target}/${BUILD:-release}
pg=${PG_URL:-postgres://postgres@127.0.0.1:5432}
reconnect=${RECONNECT:-1}
renew=${RENEW:-2}
timeout=${TIMEOUT:-90}
db="pile_cluster_bench_$$"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
psql "$pg/postgres" -qc "CREATE DATABASE $db" >/dev/null

now() { date +%s.%N; }
stat_of() { # $1 = instance 1..3; prints active_sessions (or nothing)
  curl -fsS -m 2 -H 'X-Api-Key: k' "http://127.0.0.1:1725$1/api/v1/admin/stats" 2>/dev/null |
    jq -r '.data.active_sessions' 2>/dev/null || true
}

gw=()
for i in 1 2 3; do
  "$bin/pile-server" --instance-id "gw$i" --lease-renew "$renew" \
    --http-listen "127.0.0.1:1725$i" --device-listen "127.0.0.1:1726$i" \
    --database-url "$pg/$db" --api-key k --log-format json >>"$work/gw$i.log" 2>&1 &
  gw[$i]=$!; pids+=("$!")
  # Bounded: 20 s for the first (migrations), then each.
  for _ in $(seq 200); do
    [[ -n "$(stat_of "$i")" ]] && break
    sleep 0.1
  done
  [[ -n "$(stat_of "$i")" ]] || { echo "gw$i did not start" >&2; exit 1; }
done

per=$((devices / 3))
firsts=(82210225000520 82210225100520 82210225200520)
lists=("127.0.0.1:17261,127.0.0.1:17262,127.0.0.1:17263"
       "127.0.0.1:17262,127.0.0.1:17263,127.0.0.1:17261"
       "127.0.0.1:17263,127.0.0.1:17261,127.0.0.1:17262")
echo "== $(uptime)"
for j in 0 1 2; do
  "$bin/pile-sim" run --server "${lists[$j]}" --devices "$per" --protocol bkv \
    --first-id "${firsts[$j]}" --heartbeat 11 --reconnect-delay "$reconnect" --ramp "$((ramp / 3))" \
    --seed "$((j + 1))" >>"$work/sim$j.log" 2>&1 &
  pids+=("$!")
done

total() { local t=0 s; for i in "$@"; do s=$(stat_of "$i"); t=$((t + ${s:-0})); done; echo "$t"; }
want=$((per * 3))
start=$(now)
until [[ $(total 1 2 3) -ge $want ]]; do
  (( $(echo "$(now) - $start > $timeout" | bc) )) && { echo "only $(total 1 2 3)/$want online" >&2; exit 1; }
  sleep 0.2
done
printf 'all %d piles online in %.1f s: gw1 %s, gw2 %s, gw3 %s\n' "$want" \
  "$(echo "$(now) - $start" | bc)" "$(stat_of 1)" "$(stat_of 2)" "$(stat_of 3)"
sleep 3

held=$(stat_of 1)
kill -9 "${gw[1]}"
killed=$(now)
until [[ $(total 2 3) -ge $want ]]; do
  (( $(echo "$(now) - $killed > $timeout" | bc) )) && { echo "survivors hold only $(total 2 3)/$want" >&2; exit 1; }
  sleep 0.1
done
printf 'gw1 (%s piles) killed with SIGKILL: survivors hold all %d piles after %.1f s (reconnect delay %s s): gw2 %s, gw3 %s\n' \
  "$held" "$want" "$(echo "$(now) - $killed" | bc)" "$reconnect" "$(stat_of 2)" "$(stat_of 3)"
gw1_alive() {
  curl -fsS -m 2 -H 'X-Api-Key: k' http://127.0.0.1:17252/api/v1/admin/instances |
    jq -r '.data[] | select(.instance_id == "gw1") | .alive' 2>/dev/null || echo true
}
until [[ $(gw1_alive) == false ]]; do
  (( $(echo "$(now) - $killed > $timeout" | bc) )) && { echo "gw1 still reported alive" >&2; exit 1; }
  sleep 0.2
done
printf 'gw1 reported dead (its leases expired: 3 x %s s after its last beat) %.1f s after the kill\n' \
  "$renew" "$(echo "$(now) - $killed" | bc)"
curl -fsS -m 2 -H 'X-Api-Key: k' http://127.0.0.1:17252/api/v1/admin/instances |
  jq -r '.data[] | "\(.instance_id) alive=\(.alive) sessions=\(.sessions) rss=\(.rss_bytes)"'
echo "== $(uptime)"
