#!/usr/bin/env bash
# Instructions per heartbeat under callgrind (repeatable, unlike seconds on this shared machine):
# one pile's heartbeats through the real session vs a bare framing session, both families.
# Usage: server/bench-heartbeat.sh   (CARGO_TARGET_DIR must hold
#   `cargo build --release -p pile-server --example heartbeat_cost`)
set -euo pipefail
bin=${CARGO_TARGET_DIR:-target}/release/examples/heartbeat_cost
count() { # family target n -> total instructions (user space, whole process)
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" "$3" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf '%-7s %-8s %14s %14s %12s\n' family target 'I(200)' 'I(5200)' 'per heartbeat'
for family in bkv ap3000; do
  for target in bare gateway; do
    a=$(count "$family" "$target" 200)
    b=$(count "$family" "$target" 5200)
    printf '%-7s %-8s %14s %14s %12s\n' "$family" "$target" "$a" "$b" "$(( (b - a) / 5000 ))"
  done
done
uptime
