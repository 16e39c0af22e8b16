#!/usr/bin/env bash
# The tail under background work (issue 16): do requests that overlap a
# usage flush wait longer than the others?
#
# keygate runs case 4 of gateway.sh (KEYS valid keys cycling, a scope and a
# rate limit checked on each, the tiny nginx upstream) for DURATION seconds,
# loaded by crates/keygate-server/examples/latency_log.rs, which writes down
# when each request was sent and how long its answer took, as the client saw
# it. keygate logs each usage flush and roll-up with how long it took
# (debug, `took_us`). A request overlaps a flush when [sent, sent + latency]
# meets [flush end - took, flush end]. The figure is the p99 of the
# overlapping requests over the p99 of the others (goal: at most 1.2), with
# the number of flushes the run spanned (the goal asks for 12 or more: 60 s
# at the default 5 s interval).
#
# RENICE=10|19|idle (an experiment, BENCHMARKS.md): once the keys are made,
# every thread but the gateway's gets that nice value, or SCHED_IDLE.
#
# STORE=shared runs the node on PostgreSQL and Redis (case 2 of
# scripts/bench/multinode.sh) in a schema of its own, dropped on exit, and
# also prints the p99 by second of the minute: PostgreSQL's once-a-minute
# work (the roll-up, the last uses) shares the 2 cores with the node (issue 18).
#
# It also prints, per kind of keygate thread, the CPU time it ran and the
# time it waited for a CPU while runnable during the run (/proc schedstat):
# a flush that takes seconds at `SCHED_IDLE` is waiting, not working.
#
# GENERATORS=compare (issue 18): after the run, on the same node, ROUNDS
# rounds (default 2) of wrk (gateway.sh's script) then latency_log, each for
# DURATION, with each one's req/s, p50 and p99 and the CPU PostgreSQL used
# meanwhile: the two load generators do not see the same tail.
#
# LOAD=0.8 (issue 16): the run sends at that share of the rate the warm-up
# reached, on a schedule (latency_log's `rate`), instead of as fast as
# answers come back. Closed-loop, the node's one CPU is never idle and the
# background thread, at `SCHED_IDLE`, waits seconds for it, so a minute spans
# 9 to 11 flushes; below saturation it spans them on time.
#
# Usage: bash scripts/bench/tail.sh   (DURATION=60 CONNECTIONS=32 KEYS=10000 RENICE= STORE=embedded LIMITER= LEASE_MAX=
#        BACKGROUND_PRIORITY=idle|low|normal GENERATORS=compare ROUNDS=2 LOAD=)
# Everything it starts listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail

DURATION=${DURATION:-60}
CONNECTIONS=${CONNECTIONS:-32}
KEYS=${KEYS:-10000}
BASE_PORT=${BASE_PORT:-18400}
UPSTREAM_PORT=$BASE_PORT
KEYGATE_PORT=$((BASE_PORT + 3))
KEYGATE_ADMIN_PORT=$((BASE_PORT + 4))

source "$(dirname "$0")/common.sh"

STORE_URL="sqlite://$WORK/keygate/keygate.db"
LIMITER_URL="memory://"
if [ "${STORE:-embedded}" = shared ]; then
  POSTGRES_URL=${KEYGATE_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
  SCHEMA="kg_tail_$(date +%s)"
  psql "$POSTGRES_URL" -qc "CREATE SCHEMA $SCHEMA"
  trap 'psql "$POSTGRES_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true; cleanup' EXIT
  STORE_URL="$POSTGRES_URL?options=-c%20search_path%3D$SCHEMA"
  LIMITER_URL=${KEYGATE_REDIS_URL:-redis://127.0.0.1:6379}
fi
LIMITER_URL=${LIMITER:-$LIMITER_URL} # LIMITER=memory:// or a Redis URL: another limiter

install_missing
build_keygate
(cd "$ROOT" && cargo build --release --example latency_log -q)
LOADGEN="$ROOT/target/release/examples/latency_log"

start_nginx upstream "server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 'ok\n'; } }" "${PIN_LOAD[@]}"
wait_for_port "$UPSTREAM_PORT"

mkdir -p "$WORK/keygate"
write_keygate_config "$WORK/keygate.toml" "$KEYGATE_PORT" "$KEYGATE_ADMIN_PORT" "$STORE_URL" "$LIMITER_URL"
if [ -n "${BACKGROUND_PRIORITY:-}" ]; then # idle, low or normal: another server.background_priority
  sed -i "s/^\[server\]$/[server]\nbackground_priority = \"$BACKGROUND_PRIORITY\"/" "$WORK/keygate.toml"
fi
if [ -n "${LEASE_MAX:-}" ]; then # LEASE_MAX=n: another limiter.lease_max (Redis only)
  sed -i "s/^default_plan = /lease_max = $LEASE_MAX\ndefault_plan = /" "$WORK/keygate.toml"
fi
KEYGATE_CONFIG="$WORK/keygate.toml" "$KEYGATE" migrate >/dev/null
ADMIN_KEY=$(admin_key_for "$WORK/keygate.toml")
KEYGATE_CONFIG="$WORK/keygate.toml" KEYGATE_LOG=warn,keygate_engine=debug "${PIN_PROXY[@]}" "$KEYGATE" serve \
  >"$WORK/keygate.out" 2>"$WORK/keygate.err" &
PIDS+=($!)
KEYGATE_PID=$!
wait_for_port "$KEYGATE_ADMIN_PORT"
wait_for_port "$KEYGATE_PORT"
create_keys "$KEYGATE_ADMIN_PORT" "$ADMIN_KEY" "$KEYS" "$WORK/keys.txt"
if [ -n "${RENICE:-}" ]; then
  for task in /proc/$KEYGATE_PID/task/*; do
    case $(cat "$task/comm") in keygate-gateway*) ;; *) if [ "$RENICE" = idle ]; then chrt --idle -p 0 "${task##*/}"; else renice -n "$RENICE" -p "${task##*/}" >/dev/null; fi ;; esac
  done
  for task in /proc/$KEYGATE_PID/task/*; do echo "$(cat $task/comm) $(awk '{print $19}' $task/stat)"; done >&2
fi

echo "warming up (every key cached, the set-up's events fanned out)" >&2
"${PIN_LOAD[@]}" "$LOADGEN" "127.0.0.1:$KEYGATE_PORT" /bench "$WORK/keys.txt" "$CONNECTIONS" 10 "$WORK/warm-up.log"
# How many limit decisions took over 100 µs (they waited for Redis) and
# over 1.6 ms, from keygate's histogram: "total over-100us over-1.6ms".
limiter_waits() {
  curl -sf "http://127.0.0.1:$KEYGATE_ADMIN_PORT/metrics" |
    awk '/^keygate_limiter_duration_seconds_bucket/ { split($0, a, "\""); n[a[2]] = $2 }
         /^keygate_limiter_duration_seconds_count/ { total = $2 }
         END { print total + 0, total - n["0.0001"], total - n["0.0016"] }'
}
# Per thread of keygate: "tid name ran_ns waited_ns" (schedstat: time on a
# CPU, time runnable but waiting for one).
thread_times() {
  for task in /proc/$KEYGATE_PID/task/*; do
    echo "${task##*/} $(tr ' ' _ <"$task/comm") $(cut -d' ' -f1,2 "$task/schedstat")"
  done 2>/dev/null
}
waits_before=$(limiter_waits)
thread_times >"$WORK/threads-before.txt"
RATE=()
if [ -n "${LOAD:-}" ]; then # the warm-up ran closed-loop for 10 s
  warm_rate=$(awk 'END { printf "%.0f", NR / 10 }' "$WORK/warm-up.log")
  RATE=("$(awk -v rate="$warm_rate" -v share="$LOAD" 'BEGIN { printf "%.0f", rate * share }')")
  echo "the warm-up did $warm_rate req/s; sending at $LOAD of it: ${RATE[0]} req/s" >&2
fi
echo "measuring: ${DURATION}s, $CONNECTIONS connections" >&2
"${PIN_LOAD[@]}" "$LOADGEN" "127.0.0.1:$KEYGATE_PORT" /bench "$WORK/keys.txt" "$CONNECTIONS" "$DURATION" "$WORK/requests.log" "${RATE[@]}"
thread_times >"$WORK/threads-after.txt"
echo "$waits_before $(limiter_waits)" |
  awk '{ printf "limit decisions in the run: %d; over 100 us: %d, over 1.6 ms: %d\n", $4 - $1, $5 - $2, $6 - $3 }'
awk 'NR == FNR { ran[$1] = $3; waited[$1] = $4; next }
     { name[$2] = 1; r[$2] += ($3 - ran[$1]) / 1e9; w[$2] += ($4 - waited[$1]) / 1e9 }
     END { printf "keygate threads in the run (s on a CPU / s runnable, waiting):"
           for (n in name) if (r[n] + w[n] > 0.01) printf " %s %.2f / %.2f;", n, r[n], w[n]; print "" }' \
  "$WORK/threads-before.txt" "$WORK/threads-after.txt"

python3 - "$WORK/requests.log" "$WORK/keygate.err" <<'PYEOF'
import datetime, re, sys

requests = [tuple(map(int, line.split())) for line in open(sys.argv[1])]
first, last = min(r[0] for r in requests), max(r[0] + r[1] for r in requests)
# "2026-12-01T12:00:00.123456Z DEBUG ... usage flushed rows=... took_us=..."
pattern = re.compile(r"^(\S+Z)\s+DEBUG.*?(usage flushed|usage rolled up)\S*.*?took_us=(\d+)")
windows = []
for line in open(sys.argv[2]):
    m = pattern.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
    if not m:
        continue
    end = int(datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp() * 1e6)
    took = int(m.group(3))
    if first <= end and end - took <= last:
        windows.append((end - took, end, m.group(2)))
windows.sort()
bad = sum(1 for r in requests if r[2] != 200)

def overlaps(sent, latency):
    return any(start <= sent + latency and sent <= end for start, end, _ in windows)

during = sorted(r[1] for r in requests if overlaps(r[0], r[1]))
others = sorted(r[1] for r in requests if not overlaps(r[0], r[1]))

def p(values, q):
    return values[min(len(values) - 1, int(q * len(values)))] / 1000 if values else float("nan")

flushes = sum(1 for w in windows if w[2] == "usage flushed")
took = sorted(w[1] - w[0] for w in windows)
print(f"requests: {len(requests)} in {(last - first) / 1e6:.1f} s ({len(requests) / ((last - first) / 1e6):.0f} req/s), non-200: {bad}")
print(f"background passes in the run: {flushes} usage flushes, {len(windows) - flushes} roll-ups; "
      f"each took {took[0] / 1000:.1f} to {took[-1] / 1000:.1f} ms" if took else "no background pass in the run")
print(f"| requests | count | p50 | p99 | p99.9 |")
print(f"|---|---:|---:|---:|---:|")
for name, values in (("overlapping a flush or roll-up", during), ("the others", others)):
    print(f"| {name} | {len(values)} | {p(values, 0.5):.2f} ms | {p(values, 0.99):.2f} ms | {p(values, 0.999):.2f} ms |")
if during and others:
    print(f"p99 overlapping / p99 others: {p(during, 0.99) / p(others, 0.99):.2f} (goal: at most 1.2)")

# The p99 by second of the minute (UTC) the request was sent in: work done
# once a minute shows as a few slow seconds.
by_second = {}
for sent, latency, _ in requests:
    by_second.setdefault(sent // 1_000_000 % 60, []).append(latency)
whole = sorted(r[1] for r in requests)
print(f"p99 of the run: {p(whole, 0.99):.2f} ms; by second of the minute (the five slowest):")
slowest = sorted(by_second.items(), key=lambda kv: -p(sorted(kv[1]), 0.99))[:5]
print("  " + ", ".join(f"s{s:02d}: {p(sorted(v), 0.99):.2f} ms" for s, v in slowest))
without = sorted(l for s, v in by_second.items() if s not in dict(slowest) for l in v)
print(f"p99 without those five seconds: {p(without, 0.99):.2f} ms")
print("background passes (start, second of the minute, how long): " + ", ".join(
    f"{'roll-up' if kind.endswith('up') else 'flush'} s{start // 1_000_000 % 60:02d}+{(end - start) / 1000:.0f}ms"
    for start, end, kind in windows))
PYEOF

if [ "${GENERATORS:-}" = compare ]; then
  # The same node, loaded in turn by wrk and by latency_log (issue 18).
  write_keys_lua
  postgres_since() { # PostgreSQL's CPU seconds since the figure given
    awk -v a="$1" -v b="$(cpu_seconds_of postgres)" 'BEGIN { print b - a }'
  }
  for round in $(seq 1 "${ROUNDS:-2}"); do
    pg=$(cpu_seconds_of postgres)
    BENCH_KEYS="$WORK/keys.txt" "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/keys.lua" \
      "http://127.0.0.1:$KEYGATE_PORT/bench" >"$WORK/compare.wrk"
    awk -v round="$round" -v pg="$(postgres_since "$pg")" '
      /^Requests\/sec/ { rps = $2 } $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 }
      END { printf "round %d, wrk:         %.0f req/s, p50 %s, p99 %s, PostgreSQL CPU %.2f s\n", round, rps, p50, p99, pg }' "$WORK/compare.wrk"
    pg=$(cpu_seconds_of postgres)
    "${PIN_LOAD[@]}" "$LOADGEN" "127.0.0.1:$KEYGATE_PORT" /bench "$WORK/keys.txt" "$CONNECTIONS" "$DURATION" "$WORK/compare.log" 2>/dev/null
    sort -n -k2 "$WORK/compare.log" | awk -v round="$round" -v secs="$DURATION" -v pg="$(postgres_since "$pg")" '
      { l[NR] = $2 } END { printf "round %d, latency_log: %.0f req/s, p50 %.3fms, p99 %.3fms, PostgreSQL CPU %.2f s\n",
        round, NR / secs, l[int(NR * 0.5)] / 1000, l[int(NR * 0.99)] / 1000, pg }'
  done
fi
