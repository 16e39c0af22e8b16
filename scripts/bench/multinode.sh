#!/usr/bin/env bash
# keygate on shared PostgreSQL and Redis, in one run, with wrk on loopback and
# the same keys, route and Lua script as scripts/bench/gateway.sh:
#   1. one node on the embedded defaults (SQLite, in-memory limiter);
#   1b. the same node and keys on Redis (leases on): the limiter's own cost,
#      apart from the store's;
#   2. one node on PostgreSQL and Redis (leases on, the default);
#   2b. the same node deciding every request in Redis (`limiter.lease_max = 0`:
#      coalesced calls only), the design leases are compared with;
#   3. two nodes on PostgreSQL and Redis, one wrk per node at the same time;
#   4. revocation propagation: REVOCATIONS revocations on a 3-node cluster
#      (the cluster test `keys_are_shared_and_revocations_reach_every_node_within_a_second`,
#      which prints p50, p90 and max).
# Cases 1 and 2 pin the node to one CPU and wrk to the other. Case 3 cannot
# give each node a CPU of its own on a 2-core machine: both nodes, both wrk
# processes, the upstream, PostgreSQL and Redis share the 2 cores.
#
# With PROFILE_DIR=dir, `perf record` samples the node during cases 1 and 2
# (dir/1.data, dir/2.data), as in scripts/bench/gateway.sh.
#
# Usage: bash scripts/bench/multinode.sh   (DURATION=10s CONNECTIONS=64 KEYS=10000 REVOCATIONS=100 WARMUP=2s;
# CASES="1 2" runs only those of the cases 1 1b 2 2b 3, and the ratios it can;
# REVOCATIONS=0 skips the revocation part; KEYGATE_BINARY=path runs that binary).
# Each case prints its span in UTC: scripts/bench/pg_time.py sums PostgreSQL's
# log over one (see its header).
# Needs PostgreSQL (KEYGATE_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test)
# and Redis (KEYGATE_REDIS_URL, default redis://127.0.0.1:6379). It works in a
# schema of its own, dropped on exit; everything it starts is stopped on exit.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
KEYS=${KEYS:-10000}
REVOCATIONS=${REVOCATIONS:-100}
BASE_PORT=${BASE_PORT:-18200}
UPSTREAM_PORT=$BASE_PORT
POSTGRES_URL=${KEYGATE_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${KEYGATE_REDIS_URL:-redis://127.0.0.1:6379}

CASES=${CASES:-1 1b 2 2b 3}
source "$(dirname "$0")/common.sh"

runs() { [[ " $CASES " == *" $1 "* ]]; }

SCHEMA="kg_bench_$(date +%s)"
psql "$POSTGRES_URL" -qc "CREATE SCHEMA $SCHEMA"
trap 'psql "$POSTGRES_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true; cleanup' EXIT
SHARED_STORE="$POSTGRES_URL?options=-c%20search_path%3D$SCHEMA${PG_OPTIONS:-}"

install_missing
build_keygate

start_nginx upstream "server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 'ok\n'; } }" "${PIN_LOAD[@]}"
wait_for_port "$UPSTREAM_PORT"

start_node() { # name, gateway port, admin port, command prefix (pinning)...
  local name=$1 gateway=$2 admin=$3
  shift 3
  KEYGATE_CONFIG="$WORK/$name.toml" KEYGATE_LOG=warn "$@" "$KEYGATE" serve >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PIDS+=($!)
  NODE_PID=$!
  wait_for_port "$admin"
  wait_for_port "$gateway"
}

write_keys_lua
: >"$WORK/results.tsv"
echo "measuring: $DURATION per case, $CONNECTIONS connections" >&2

# 1. The embedded defaults (its store and keys serve case 1b too).
if runs 1 || runs 1b; then
mkdir -p "$WORK/embedded"
write_keygate_config "$WORK/embedded.toml" $((BASE_PORT + 1)) $((BASE_PORT + 2)) "sqlite://$WORK/embedded/keygate.db" "memory://"
ADMIN_KEY=$(admin_key_for "$WORK/embedded.toml")
start_node embedded $((BASE_PORT + 1)) $((BASE_PORT + 2)) "${PIN_PROXY[@]}"
create_keys $((BASE_PORT + 2)) "$ADMIN_KEY" "$KEYS" "$WORK/embedded-keys.txt"
if runs 1; then
  KEYGATE_PID=$NODE_PID PROFILE_AS=1 BENCH_KEYS="$WORK/embedded-keys.txt" run_wrk "1. one node, SQLite + memory" "http://127.0.0.1:$((BASE_PORT + 1))/bench" "$WORK/keys.lua"
fi
kill "$NODE_PID" && wait "$NODE_PID" 2>/dev/null || true
fi

# 1b. The same store and keys, the limiter on Redis.
if runs 1b; then
write_keygate_config "$WORK/embedded-redis.toml" $((BASE_PORT + 1)) $((BASE_PORT + 2)) "sqlite://$WORK/embedded/keygate.db" "$REDIS_URL"
start_node embedded-redis $((BASE_PORT + 1)) $((BASE_PORT + 2)) "${PIN_PROXY[@]}"
BENCH_KEYS="$WORK/embedded-keys.txt" run_wrk "1b. one node, SQLite + Redis" "http://127.0.0.1:$((BASE_PORT + 1))/bench" "$WORK/keys.lua"
kill "$NODE_PID" && wait "$NODE_PID" 2>/dev/null || true
fi

# 2. One node on PostgreSQL and Redis.
write_keygate_config "$WORK/shared-a.toml" $((BASE_PORT + 3)) $((BASE_PORT + 4)) "$SHARED_STORE" "$REDIS_URL"
write_keygate_config "$WORK/shared-b.toml" $((BASE_PORT + 5)) $((BASE_PORT + 6)) "$SHARED_STORE" "$REDIS_URL"
ADMIN_KEY=$(admin_key_for "$WORK/shared-a.toml")
start_node shared-a $((BASE_PORT + 3)) $((BASE_PORT + 4)) "${PIN_PROXY[@]}"
create_keys $((BASE_PORT + 4)) "$ADMIN_KEY" "$KEYS" "$WORK/shared-keys.txt"
# PostgreSQL's and Redis's CPU over the case (its warm-up included), on the
# cores the node and wrk use: the usage flush and the roll-up are most of
# PostgreSQL's (scripts/bench/pg_time.py), the lease script most of Redis's.
# The roll-up runs at each multiple of `usage.rollup_every` (10 minutes), and
# at a node's first background pass, one `usage.flush_interval` after it
# starts (inside the measured minute if that interval is longer than the key
# creation and warm-up). Its statements take about 2 s at 10,000 keys: a case
# whose minute holds one says so in its CPU figure.
# (Its keys serve cases 2b and 3 too.)
if runs 2; then
  pg_before=$(cpu_seconds_of postgres)
  redis_before=$(cpu_seconds_of redis-server)
  KEYGATE_PID=$NODE_PID PROFILE_AS=2 BENCH_KEYS="$WORK/shared-keys.txt" run_wrk "2. one node, PostgreSQL + Redis" "http://127.0.0.1:$((BASE_PORT + 3))/bench" "$WORK/keys.lua"
  pg_cpu=$(awk -v a="$pg_before" -v b="$(cpu_seconds_of postgres)" 'BEGIN { printf "%.2f", b - a }')
  redis_cpu=$(awk -v a="$redis_before" -v b="$(cpu_seconds_of redis-server)" 'BEGIN { printf "%.2f", b - a }')
  echo "  PostgreSQL CPU during case 2: $pg_cpu s (Redis: $redis_cpu s)" >&2
fi
kill "$NODE_PID" && wait "$NODE_PID" 2>/dev/null || true

# 2b. The same node and keys, every request decided in Redis.
if runs 2b; then
sed 's/^default_plan = /lease_max = 0\ndefault_plan = /' "$WORK/shared-a.toml" >"$WORK/shared-nolease.toml"
start_node shared-nolease $((BASE_PORT + 3)) $((BASE_PORT + 4)) "${PIN_PROXY[@]}"
KEYGATE_PID=$NODE_PID PROFILE_AS=2b BENCH_KEYS="$WORK/shared-keys.txt" run_wrk "2b. one node, PostgreSQL + Redis, no leases" "http://127.0.0.1:$((BASE_PORT + 3))/bench" "$WORK/keys.lua"
kill "$NODE_PID" && wait "$NODE_PID" 2>/dev/null || true
fi

# 3. Two nodes, unpinned, each loaded by its own wrk with half the connections.
if runs 3; then
start_node shared-a $((BASE_PORT + 3)) $((BASE_PORT + 4))
start_node shared-b $((BASE_PORT + 5)) $((BASE_PORT + 6))
half=$((CONNECTIONS / 2))
for port in $((BASE_PORT + 3)) $((BASE_PORT + 5)); do # warm both caches
  BENCH_KEYS="$WORK/shared-keys.txt" wrk -t1 -c"$half" -d2s -s "$WORK/keys.lua" "http://127.0.0.1:$port/bench" >/dev/null
done
BENCH_KEYS="$WORK/shared-keys.txt" wrk -t1 -c"$half" -d"$DURATION" --latency -s "$WORK/keys.lua" "http://127.0.0.1:$((BASE_PORT + 3))/bench" >"$WORK/node-a.wrk" &
first=$!
BENCH_KEYS="$WORK/shared-keys.txt" wrk -t1 -c"$half" -d"$DURATION" --latency -s "$WORK/keys.lua" "http://127.0.0.1:$((BASE_PORT + 5))/bench" >"$WORK/node-b.wrk"
wait "$first"
aggregate=$(awk '/^Requests\/sec/ {sum += $2} END {printf "%.2f", sum}' "$WORK/node-a.wrk" "$WORK/node-b.wrk")
p99s=$(awk '$1 == "99%" {printf "%s ", $2}' "$WORK/node-a.wrk" "$WORK/node-b.wrk")
non2xx=$(awk '/Non-2xx/ {sum += $NF} END {print sum + 0}' "$WORK/node-a.wrk" "$WORK/node-b.wrk")
printf '%s\t%s\t%s\t%s\t%s\n' "3. two nodes, PostgreSQL + Redis (sum)" "$aggregate" "-" "$p99s" "$non2xx" >>"$WORK/results.tsv"
echo "  3. two nodes: $aggregate req/s in total, p99 per node $p99s" >&2
fi
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done

print_results
awk -F'\t' '
  function ms(t) { return t ~ /us$/ ? t / 1000 : (t ~ /ms$/ ? t + 0 : t * 1000) }
  $1 ~ /^1\. / { embedded = $2; p1 = ms($4) }
  $1 ~ /^1b\. / { redis_only = $2; p1b = ms($4) }
  $1 ~ /^2\. / { shared = $2; p2 = ms($4) }
  $1 ~ /^2b\. / { coalesced = $2 }
  $1 ~ /^3\. / { two = $2 }
  END {
    if (embedded > 0 && shared > 0) printf "\none node: PostgreSQL + Redis / SQLite + memory: %.2f, p99 %.2fx\n", shared / embedded, p2 / p1
    if (embedded > 0 && coalesced > 0) printf "one node, no leases: %.2f\n", coalesced / embedded
    if (embedded > 0 && redis_only > 0) printf "one node: SQLite + Redis / SQLite + memory: %.2f, p99 %.2fx\n", redis_only / embedded, p1b / p1
    if (shared > 0 && two > 0) printf "two nodes / one node (PostgreSQL + Redis): %.2f\n", two / shared
  }
' "$WORK/results.tsv"

[ "$REVOCATIONS" = 0 ] && exit 0 # REVOCATIONS=0: the load cases only
echo
echo "revocation propagation ($REVOCATIONS revocations, 3 nodes, debug build of the cluster test):"
(cd "$ROOT" && KEYGATE_REQUIRE_SERVICES=1 KEYGATE_REVOCATIONS="$REVOCATIONS" \
  cargo test -q -p keygate-cli --test cli keys_are_shared_and_revocations -- --nocapture 2>&1 |
  grep "revocation propagation")
