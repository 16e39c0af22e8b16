#!/usr/bin/env bash
# What a hand-written engine would save (issue 16, designs left):
# crates/keygate-server/examples/bare_proxy.rs with hyper's client, with
# its `inline` client (the request written and the answer read in the client
# connection's own task: no dispatch channel, no task per upstream
# connection), and as `raw` (no hyper at all: heads parsed with httparse
# and written by hand on both sides), all on the proxy CPU at the same time,
# each loaded by its own wrk with half the connections, against the same
# tiny upstream nginx, in ROUNDS rounds. The figure is each proxy's CPU time
# per request (from /proc): on one CPU, throughput is its inverse, and side
# by side all see the machine's drift alike (as gateway.sh's SIDE_BY_SIDE
# does). A fourth proxy, nginx as a plain proxy, runs beside them as the
# yardstick. Latency is not reported: four processes sharing one CPU wait
# for each other, so their tails say nothing about any one of them.
#
# Usage: bash scripts/bench/bare.sh   (DURATION=8s CONNECTIONS=32 ROUNDS=3)
# Everything it starts listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail

DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-18300}
UPSTREAM_PORT=$BASE_PORT
HYPER_PORT=$((BASE_PORT + 1))
INLINE_PORT=$((BASE_PORT + 2))
NGINX_PORT=$((BASE_PORT + 3))
RAW_PORT=$((BASE_PORT + 4))
PROXIES="hyper inline raw nginx"

source "$(dirname "$0")/common.sh"

install_missing
(cd "$ROOT" && cargo build --release -p keygate-server --example bare_proxy -q)
BARE="$ROOT/target/release/examples/bare_proxy"

start_nginx upstream "server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 'ok\n'; } }" "${PIN_LOAD[@]}"
start_nginx proxy "server { listen 127.0.0.1:$NGINX_PORT; location / { $PROXY_LOCATION } }" "${PIN_PROXY[@]}"
NGINX_PROXY_PID=$!
"${PIN_PROXY[@]}" "$BARE" "$HYPER_PORT" "$UPSTREAM_PORT" &
PIDS+=($!)
HYPER_PID=$!
"${PIN_PROXY[@]}" "$BARE" "$INLINE_PORT" "$UPSTREAM_PORT" inline &
PIDS+=($!)
INLINE_PID=$!
"${PIN_PROXY[@]}" "$BARE" "$RAW_PORT" "$UPSTREAM_PORT" raw &
PIDS+=($!)
RAW_PID=$!
for port in "$UPSTREAM_PORT" "$HYPER_PORT" "$INLINE_PORT" "$RAW_PORT" "$NGINX_PORT"; do wait_for_port "$port"; done
for port in "$HYPER_PORT" "$INLINE_PORT" "$RAW_PORT"; do
  answer=$(curl -s -H 'X-API-Key: kg_test' "http://127.0.0.1:$port/bench")
  [ "$answer" = ok ] || { echo "the proxy on port $port answered '$answer'" >&2; exit 1; }
done

# Each proxy's process and port; nginx's worker is a child of the master
# that start_nginx started.
declare -A PID=([hyper]=$HYPER_PID [inline]=$INLINE_PID [raw]=$RAW_PID [nginx]=$(pgrep -P "$NGINX_PROXY_PID" | head -1))
declare -A PORT=([hyper]=$HYPER_PORT [inline]=$INLINE_PORT [raw]=$RAW_PORT [nginx]=$NGINX_PORT)

load() { # port, duration, output
  "${PIN_LOAD[@]}" wrk -t1 -c$((CONNECTIONS / 2)) -d"$2" --latency -H 'X-API-Key: kg_test' "http://127.0.0.1:$1/bench" >"$3"
}

for round in $(seq 1 "$ROUNDS"); do
  loads=()
  for name in $PROXIES; do
    load "${PORT[$name]}" 2s /dev/null &
    loads+=($!)
  done
  wait "${loads[@]}"
  declare -A start=()
  for name in $PROXIES; do start[$name]=$(cpu_ticks "${PID[$name]}"); done
  loads=()
  for name in $PROXIES; do
    load "${PORT[$name]}" "$DURATION" "$WORK/$name-$round.wrk" &
    loads+=($!)
  done
  wait "${loads[@]}"
  for name in $PROXIES; do
    awk -v name="$name" -v round="$round" -v ticks=$(($(cpu_ticks "${PID[$name]}") - ${start[$name]})) -v hz="$(getconf CLK_TCK)" '
      /requests in/ { requests = $1 } /^Requests\/sec/ { rps = $2 } $1 == "99%" { p99 = $2 } /Non-2xx/ { bad = $NF }
      END { printf "%s\t%s\t%s\t%s\t%d\t%.3f\n", round, name, rps, p99, bad, ticks * 1e6 / hz / requests }
    ' "$WORK/$name-$round.wrk" >>"$WORK/bare.tsv"
  done
done

awk -F'\t' '
  BEGIN { print "| round | hyper client: req/s, CPU us/request | inline client | raw | nginx proxy | inline / hyper | raw / hyper | raw / nginx |"; print "|---|---|---|---|---|---:|---:|---:|" }
  { rps[$1, $2] = $3; cpu[$1, $2] = $6; if ($5 > 0) bad = 1; rounds = $1 }
  END {
    for (r = 1; r <= rounds; r++) {
      inline[r] = cpu[r, "inline"] / cpu[r, "hyper"]; raw[r] = cpu[r, "raw"] / cpu[r, "hyper"]; floor[r] = cpu[r, "raw"] / cpu[r, "nginx"]
      printf "| %d | %s, %.2f | %s, %.2f | %s, %.2f | %s, %.2f | %.3f | %.3f | %.3f |\n", r, rps[r, "hyper"], cpu[r, "hyper"], rps[r, "inline"], cpu[r, "inline"], rps[r, "raw"], cpu[r, "raw"], rps[r, "nginx"], cpu[r, "nginx"], inline[r], raw[r], floor[r]
    }
    printf "\nCPU per request, medians of %d rounds: inline / hyper %.3f, raw / hyper %.3f, raw / nginx %.3f\n", rounds, median(inline, rounds), median(raw, rounds), median(floor, rounds)
    if (bad) print "WARNING: some answers were not 2xx"
  }
  function median(values, n,   i, j, t, sorted) {
    for (i = 1; i <= n; i++) sorted[i] = values[i]
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (sorted[j] < sorted[i]) { t = sorted[i]; sorted[i] = sorted[j]; sorted[j] = t }
    return n % 2 ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
  }
' "$WORK/bare.tsv"
