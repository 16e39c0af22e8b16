#!/usr/bin/env bash
# What a hand-written engine would save (issue 16, designs left):
# crates/keygate-server/examples/bare_proxy.rs with hyper's client, with
# its `inline` client (the request written and the answer read in the client
# connection's own task: no dispatch channel, no task per upstream
# connection), and as `raw` (no hyper at all: heads parsed with httparse
# and written by hand on both sides), with nginx as a plain proxy as the
# yardstick, against the same tiny upstream nginx, in ROUNDS rounds. The
# figure is each proxy's CPU time per request (from /proc).
#
# By default the proxies (PROXIES, any of "hyper inline raw nginx", the
# first the one the others are compared with) run on the proxy CPU at the
# same time, each loaded by its own wrk with half the connections, so all
# see the machine's drift alike (as gateway.sh's SIDE_BY_SIDE does). That is
# fair for two builds of one program, not for two different engines: how
# many events a wakeup finds depends on the neighbour, and with it what a
# request costs (BENCHMARKS.md, "The floor of a hand-written engine"). With
# ALONE=1 each proxy has the CPU to itself in turn, with all CONNECTIONS, as
# in gateway.sh's plain cases. Latency is not reported: side by side,
# processes sharing one CPU wait for each other.
#
# Usage: bash scripts/bench/bare.sh   (DURATION=8s CONNECTIONS=32 ROUNDS=3;
#        PROXIES="hyper raw"; ALONE=1)
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
PROXIES=${PROXIES:-hyper inline raw nginx}

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

load() { # port, connections, duration, output
  "${PIN_LOAD[@]}" wrk -t1 -c"$2" -d"$3" --latency -H 'X-API-Key: kg_test' "http://127.0.0.1:$1/bench" >"$4"
}

# One measurement of the proxies in $1 at once, each with $2 connections.
measure() { # names, connections, round
  local name loads=()
  for name in $1; do
    load "${PORT[$name]}" "$2" 2s /dev/null &
    loads+=($!)
  done
  wait "${loads[@]}"
  declare -A start=()
  for name in $1; do start[$name]=$(cpu_ticks "${PID[$name]}"); done
  loads=()
  for name in $1; do
    load "${PORT[$name]}" "$2" "$DURATION" "$WORK/$name-$3.wrk" &
    loads+=($!)
  done
  wait "${loads[@]}"
  for name in $1; do
    awk -v name="$name" -v round="$3" -v ticks=$(($(cpu_ticks "${PID[$name]}") - ${start[$name]})) -v hz="$(getconf CLK_TCK)" '
      /requests in/ { requests = $1 } /^Requests\/sec/ { rps = $2 } $1 == "99%" { p99 = $2 } /Non-2xx/ { bad = $NF }
      END { printf "%s\t%s\t%s\t%s\t%d\t%.3f\n", round, name, rps, p99, bad, ticks * 1e6 / hz / requests }
    ' "$WORK/$name-$3.wrk" >>"$WORK/bare.tsv"
  done
}

for round in $(seq 1 "$ROUNDS"); do
  if [ -n "${ALONE:-}" ]; then
    for name in $PROXIES; do measure "$name" "$CONNECTIONS" "$round"; done
  else
    measure "$PROXIES" $((CONNECTIONS / 2)) "$round"
  fi
done

# A row per round: each proxy's req/s and CPU per request, then each
# proxy's CPU per request over the first's (and over nginx's, if it runs);
# then the medians of those ratios.
awk -F'\t' -v proxies="$PROXIES" '
  BEGIN {
    n = split(proxies, name, " ")
    for (i = 1; i <= n; i++) if (name[i] == "nginx") yardstick = i
    head = "| round |"; rule = "|---|"
    for (i = 1; i <= n; i++) { head = head " " name[i] ": req/s, CPU us/request |"; rule = rule "---|" }
    for (i = 2; i <= n; i++) { head = head " " name[i] " / " name[1] " |"; rule = rule "---:|" }
    if (yardstick > 1) for (i = 2; i <= n; i++) if (i != yardstick) { head = head " " name[i] " / nginx |"; rule = rule "---:|" }
    print head; print rule
  }
  { rps[$1, $2] = $3; cpu[$1, $2] = $6; if ($5 > 0) bad = 1; rounds = $1 }
  END {
    for (r = 1; r <= rounds; r++) {
      row = "| " r " |"
      for (i = 1; i <= n; i++) row = row sprintf(" %s, %.2f |", rps[r, name[i]], cpu[r, name[i]])
      for (i = 2; i <= n; i++) { first[i, r] = cpu[r, name[i]] / cpu[r, name[1]]; row = row sprintf(" %.3f |", first[i, r]) }
      if (yardstick > 1) for (i = 2; i <= n; i++) if (i != yardstick) { nginx[i, r] = cpu[r, name[i]] / cpu[r, "nginx"]; row = row sprintf(" %.3f |", nginx[i, r]) }
      print row
    }
    line = sprintf("\nCPU per request, medians of %d rounds:", rounds)
    for (i = 2; i <= n; i++) line = line sprintf(" %s / %s %.3f,", name[i], name[1], median(first, i, rounds))
    if (yardstick > 1) for (i = 2; i <= n; i++) if (i != yardstick) line = line sprintf(" %s / nginx %.3f,", name[i], median(nginx, i, rounds))
    print substr(line, 1, length(line) - 1)
    if (bad) print "WARNING: some answers were not 2xx"
  }
  function median(values, column, count,   i, j, t, sorted) {
    for (i = 1; i <= count; i++) sorted[i] = values[column, i]
    for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++) if (sorted[j] < sorted[i]) { t = sorted[i]; sorted[i] = sorted[j]; sorted[j] = t }
    return count % 2 ? sorted[(count + 1) / 2] : (sorted[count / 2] + sorted[count / 2 + 1]) / 2
  }
' "$WORK/bare.tsv"
