#!/usr/bin/env bash
# Side-by-side throughput of wrk and pile-load against the same endpoint, alternating rounds so
# that load from other processes on the machine hits both alike. Prints each round (throughput
# and the client's own CPU time per request) and the median throughput ratio.
# Usage: compare.sh URL [ROUNDS] [SECONDS] [PILE_LOAD_BINARY]
set -euo pipefail
url=${1:?usage: compare.sh URL [ROUNDS] [SECONDS] [PILE_LOAD_BINARY]}
rounds=${2:-5}
secs=${3:-10}
pile=${4:-${CARGO_TARGET_DIR:-target}/release/pile-load}
cpu=$(mktemp)
trap 'rm -f "$cpu"' EXIT
# CPU microseconds per request from /usr/bin/time's "user sys" and a request count.
per_req() { awk -v n="$1" '{printf "%.2f", ($1 + $2) * 1e6 / n}' "$cpu"; }
ratios=()
for i in $(seq "$rounds"); do
  out=$(/usr/bin/time -f '%U %S' -o "$cpu" wrk -t2 -c50 -d"${secs}s" "$url")
  w=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  wn=$(awk '/requests in/ {print $1}' <<<"$out")
  wc=$(per_req "$wn")
  out=$(/usr/bin/time -f '%U %S' -o "$cpu" "$pile" http --url "$url" -c 50 --duration "${secs}s" --json)
  p=$(awk -F'[:,]' '/"qps"/ {gsub(/ /,"",$2); print $2}' <<<"$out")
  pn=$(awk -F'[:,]' '/"requests"/ {gsub(/ /,"",$2); print $2}' <<<"$out")
  pc=$(per_req "$pn")
  r=$(awk -v p="$p" -v w="$w" 'BEGIN {printf "%.3f", p / w}')
  ratios+=("$r")
  printf 'round %d: wrk %9.0f req/s (%s us CPU/req)   pile-load %9.0f req/s (%s us CPU/req)   ratio %s\n' \
    "$i" "$w" "$wc" "$p" "$pc" "$r"
done
printf '%s\n' "${ratios[@]}" | sort -n |
  awk '{a[NR]=$1} END {printf "median ratio pile-load/wrk: %s over %d rounds\n", a[int((NR+1)/2)], NR}'
