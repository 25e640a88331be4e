#!/usr/bin/env bash
# Side-by-side throughput and client CPU of wrk and pile-load against the same endpoint,
# alternating rounds so that load from other processes on the machine hits both alike. Prints
# each round (throughput and the client's own CPU time per request, from /usr/bin/time) and the
# median throughput ratio and CPU ratio. Both keep connections alive, no pipelining.
# Usage: compare.sh URL [ROUNDS] [SECONDS] [CONNECTIONS] [PILE_LOAD_BINARY]
# Env: HEADER='X-Api-Key: k' adds a header to both.
set -euo pipefail
url=${1:?usage: compare.sh URL [ROUNDS] [SECONDS] [CONNECTIONS] [PILE_LOAD_BINARY]}
rounds=${2:-5}
secs=${3:-10}
conns=${4:-32}
pile=${5:-${CARGO_TARGET_DIR:-target}/release/pile-load}
hdr=()
[[ -n ${HEADER:-} ]] && hdr=(-H "$HEADER")
cpu=$(mktemp)
trap 'rm -f "$cpu"' EXIT
# CPU microseconds per request from /usr/bin/time's "user sys" and a request count.
per_req() { awk -v n="$1" '{printf "%.2f", ($1 + $2) * 1e6 / n}' "$cpu"; }
ratios=()
cpus=()
for i in $(seq "$rounds"); do
  out=$(/usr/bin/time -f '%U %S' -o "$cpu" wrk -t2 -c"$conns" -d"${secs}s" "${hdr[@]}" "$url")
  w=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  wn=$(awk '/requests in/ {print $1}' <<<"$out")
  wnon=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  wc=$(per_req "$wn")
  out=$(/usr/bin/time -f '%U %S' -o "$cpu" "$pile" http -k -c "$conns" --threads 2 --duration "${secs}s" \
    "${hdr[@]}" --json "$url")
  p=$(jq .qps <<<"$out")
  pn=$(jq .requests <<<"$out")
  pok=$(jq .success <<<"$out")
  pc=$(per_req "$pn")
  r=$(awk -v p="$p" -v w="$w" 'BEGIN {printf "%.3f", p / w}')
  c=$(awk -v p="$pc" -v w="$wc" 'BEGIN {printf "%.3f", p / w}')
  ratios+=("$r"); cpus+=("$c")
  printf 'round %d: wrk %8.0f req/s (%s us CPU/req, non-2xx %s)   pile-load %8.0f req/s (%s us CPU/req, 2xx %s of %s)   ratio %s, CPU ratio %s\n' \
    "$i" "$w" "$wc" "${wnon:-0}" "$p" "$pc" "$pok" "$pn" "$r" "$c"
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median throughput ratio pile-load/wrk: $(printf '%s\n' "${ratios[@]}" | median) over $rounds rounds"
echo "median CPU-per-request ratio pile-load/wrk: $(printf '%s\n' "${cpus[@]}" | median)"
echo "load average after: $(uptime)"
