#!/usr/bin/env bash
# keygate's gateway against nginx, in one run, with wrk on loopback.
#
# Five cases against the same tiny upstream (an nginx `return 200`):
#   1. direct to the upstream;
#   2. nginx as a plain reverse proxy;
#   3. nginx doing API-key auth: `map` over 10,000 keys plus `limit_req` per key;
#   4. keygate with 10,000 valid keys cycling, each checked for scope and rate limit;
#   5. keygate rejecting invalid keys (bad checksum);
#   4a. keygate on a route with `auth = false`, the same keys sent (and
#       stripped), the same upstream: what auth and limits cost (issue 16).
# With BARE=1, one more case:
#   2b. crates/keygate-server/examples/bare_proxy.rs, a proxy on keygate's
#       engine (hyper, one upstream connection per client connection) that
#       does nothing else, loaded as case 4a is (the keys sent): case 4a /
#       case 2b is what keygate's own work on the open route costs.
# With BASELINE=/path/to/another/keygate (e.g. built from the commit before a
# change), two more cases on the same store, config and CPU:
#   6. case 4 with the baseline binary;
#   7. case 4 with this binary again, so that drift during the run shows.
# The proxy under test gets one CPU (taskset), wrk and the upstream the other,
# so nginx (one worker) and keygate (tokio sees one CPU) compete on equal terms.
# Access logs are off on both sides: this measures the proxy, not the disk.
# With EVENTS=compare (issue 7), case 4 with usage recording and events on
# (the defaults) against a twin with both off (`usage.enabled = false`,
# `events.enabled = false`: no counters, no outbox, no scans), each on its
# own copy of the store, both on the proxy CPU *at the same time*, each
# loaded by its own wrk with half the connections, in ROUNDS rounds (default
# 3). Run one after the other, two runs of the same binary here differ by up
# to 20 % (the machine's speed drifts); side by side, both see the same
# drift. The figure compared is CPU time per request (all of each process's
# threads, from /proc): on one CPU, throughput is its inverse. The result is
# the median of the rounds' off / on ratios, i.e. on's throughput over off's.
# With AUTH_COST=compare (issue 16), the same side-by-side method for what
# auth and limits cost: two copies of this binary, one loaded on the route
# that checks keys (case 4), the other on the `auth = false` route (case 4a).
# Its median is case 4 / case 4a without the drift between two sequential cases.
# ALONE=1 loads the two twins one after the other in each round, each with
# all the connections and the proxy CPU to itself (no neighbour polluting
# its caches or changing how many events a wakeup finds), still comparing
# CPU per request, round by round.
# AUTH_CONFIG='toml' is appended to the auth twin's config only, to find
# what one part of auth costs: e.g. AUTH_CONFIG=$'[headers]\nratelimit = []'
# leaves out the rate-limit headers, so the ratio moves by what they cost.
# With TELEMETRY=compare (issue 21), the same side-by-side method for what
# tracing costs when on: two copies of this binary, one exporting a span per
# request over OTLP/HTTP (to the upstream nginx, which answers 200), the
# other with `[telemetry]` unset, as shipped. "No cost when off" is
# SIDE_BY_SIDE against the binary from before tracing existed.
# With PROFILE_DIR=dir, `perf record` samples keygate during cases 4 and 4a
# and the bare proxy during case 2b (dir/4.data, dir/4a.data, dir/2b.data; `perf report -i dir/4.data --sort dso,sym`);
# PERF_ARGS replaces `record -q -F 1999`, e.g. `stat -e raw_syscalls:sys_enter`.
# scripts/bench/perf_diff.py compares two such profiles in µs a request.
#
# The profile-guided build (scripts/build-pgo.sh) is measured with
# KEYGATE_BINARY=$(bash scripts/build-pgo.sh).
#
# Usage: bash scripts/bench/gateway.sh        (DURATION=10s CONNECTIONS=64 KEYS=10000;
#        BASELINE=path/to/keygate; EVENTS=compare ROUNDS=3; SIDE_BY_SIDE=path/to/keygate;
#        AUTH_COST=compare [ALONE=1] [AUTH_CONFIG=toml]; TELEMETRY=compare; PROFILE_DIR=dir; BARE=1)
# Everything it starts listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
KEYS=${KEYS:-10000}
BASE_PORT=${BASE_PORT:-18100}
UPSTREAM_PORT=$BASE_PORT
NGINX_PROXY_PORT=$((BASE_PORT + 1))
NGINX_AUTH_PORT=$((BASE_PORT + 2))
KEYGATE_PORT=$((BASE_PORT + 3))
KEYGATE_ADMIN_PORT=$((BASE_PORT + 4))

source "$(dirname "$0")/common.sh"

install_missing
build_keygate
if [ -n "${BARE:-}" ]; then
  (cd "$ROOT" && cargo build --release -p keygate-server --example bare_proxy -q)
fi

# The tiny upstream, shared by every case.
start_nginx upstream "server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 'ok\n'; } location = /v1/traces { return 200; } }" "${PIN_LOAD[@]}"
wait_for_port "$UPSTREAM_PORT"

# keygate: one plan with a limit that is never reached, a route that needs a scope.
write_keygate_config "$WORK/keygate.toml" "$KEYGATE_PORT" "$KEYGATE_ADMIN_PORT" "sqlite://$WORK/keygate/keygate.db" "memory://"
mkdir -p "$WORK/keygate"
KEYGATE_CONFIG="$WORK/keygate.toml" "$KEYGATE" migrate >/dev/null
ADMIN_KEY=$(admin_key_for "$WORK/keygate.toml")
start_keygate() { # binary, [config file]
  KEYGATE_CONFIG="${2:-$WORK/keygate.toml}" KEYGATE_LOG=warn "${PIN_PROXY[@]}" "$1" serve >>"$WORK/keygate.out" 2>>"$WORK/keygate.err" &
  PIDS+=($!)
  KEYGATE_PID=$!
  wait_for_port "$KEYGATE_ADMIN_PORT"
  wait_for_port "$KEYGATE_PORT"
}

stop_keygate() {
  kill "$KEYGATE_PID" && wait "$KEYGATE_PID" 2>/dev/null || true
  sleep 0.5 # the ports are free again
}

start_keygate "$KEYGATE"

create_keys "$KEYGATE_ADMIN_PORT" "$ADMIN_KEY" "$KEYS" "$WORK/keys.txt"

# Invalid keys: the right shape, a wrong checksum.
python3 - "$WORK/keys.txt" "$WORK/invalid.txt" <<'EOF'
import sys
keys = open(sys.argv[1]).read().split()
with open(sys.argv[2], "w") as f:
    for key in keys:
        f.write(key[:-1] + ("A" if key[-1] != "A" else "B") + "\n")
EOF

# nginx with auth: the same keys in a map, limit_req per key (never reached).
{
  echo "map_hash_max_size 262144; map_hash_bucket_size 128;"
  echo "map \$http_x_api_key \$api_client { default \"\";"
  awk '{printf "  \"%s\" \"k%d\";\n", $1, NR}' "$WORK/keys.txt"
  echo "}"
  echo "limit_req_zone \$api_client zone=perkey:10m rate=100000r/s;"
  echo "server { listen 127.0.0.1:$NGINX_AUTH_PORT; location / {"
  echo "  if (\$api_client = \"\") { return 401; }"
  echo "  limit_req zone=perkey burst=100000 nodelay;"
  echo "  proxy_set_header X-API-Key \"\"; $PROXY_LOCATION } }"
} >"$WORK/auth-servers.conf"
start_nginx nginx-proxy "server { listen 127.0.0.1:$NGINX_PROXY_PORT; location / { $PROXY_LOCATION } }" "${PIN_PROXY[@]}"
start_nginx nginx-auth "include $WORK/auth-servers.conf;" "${PIN_PROXY[@]}"
wait_for_port "$NGINX_PROXY_PORT"
wait_for_port "$NGINX_AUTH_PORT"

write_keys_lua

# Sanity: each case answers as intended before it is measured.
first_key=$(head -1 "$WORK/keys.txt")
for check in "$NGINX_AUTH_PORT 200 $first_key" "$KEYGATE_PORT 200 $first_key" "$NGINX_AUTH_PORT 401 wrong" "$KEYGATE_PORT 401 wrong"; do
  set -- $check
  status=$(python3 -c 'import http.client,sys; c=http.client.HTTPConnection("127.0.0.1",int(sys.argv[1])); c.request("GET","/bench",headers={"X-API-Key":sys.argv[2]}); print(c.getresponse().status)' "$1" "$3")
  [ "$status" = "$2" ] || { echo "port $1 with key $3 answered $status, expected $2" >&2; exit 1; }
done

echo "measuring: $DURATION per case, $CONNECTIONS connections, one wrk thread" >&2
: >"$WORK/results.tsv"
run_wrk "1. direct upstream" "http://127.0.0.1:$UPSTREAM_PORT/bench"
run_wrk "2. nginx proxy" "http://127.0.0.1:$NGINX_PROXY_PORT/bench"
if [ -n "${BARE:-}" ]; then
  BARE_PORT=$((BASE_PORT + 7))
  "${PIN_PROXY[@]}" "$ROOT/target/release/examples/bare_proxy" "$BARE_PORT" "$UPSTREAM_PORT" &
  PIDS+=($!)
  wait_for_port "$BARE_PORT"
  # With PROFILE_DIR, sampled as keygate is (dir/2b.data).
  PROFILE_AS=2b KEYGATE_PID=${PIDS[-1]} BENCH_KEYS="$WORK/keys.txt" run_wrk "2b. bare hyper proxy" "http://127.0.0.1:$BARE_PORT/bench" "$WORK/keys.lua"
  kill "${PIDS[-1]}"
fi
BENCH_KEYS="$WORK/keys.txt" run_wrk "3. nginx map+limit_req" "http://127.0.0.1:$NGINX_AUTH_PORT/bench" "$WORK/keys.lua"
PROFILE_AS=4 BENCH_KEYS="$WORK/keys.txt" run_wrk "4. keygate valid keys" "http://127.0.0.1:$KEYGATE_PORT/bench" "$WORK/keys.lua"
PROFILE_AS=4a BENCH_KEYS="$WORK/keys.txt" BENCH_PATH=/open/bench run_wrk "4a. keygate open route (auth = false)" "http://127.0.0.1:$KEYGATE_PORT/open/bench" "$WORK/keys.lua"
BENCH_KEYS="$WORK/invalid.txt" run_wrk "5. keygate invalid keys" "http://127.0.0.1:$KEYGATE_PORT/bench" "$WORK/keys.lua"
if [ -n "${BASELINE:-}" ]; then
  stop_keygate
  start_keygate "$BASELINE"
  BENCH_KEYS="$WORK/keys.txt" run_wrk "6. baseline keygate valid keys" "http://127.0.0.1:$KEYGATE_PORT/bench" "$WORK/keys.lua"
  stop_keygate
  start_keygate "$KEYGATE"
  BENCH_KEYS="$WORK/keys.txt" run_wrk "7. keygate valid keys again" "http://127.0.0.1:$KEYGATE_PORT/bench" "$WORK/keys.lua"
fi
# SIDE_BY_SIDE=/path/to/another/keygate: the same side-by-side method, with
# "on" this binary and "off" that one, on the same config (issue 16's
# bake-off: on one noisy machine, only side by side is steady enough).
if [ -n "${SIDE_BY_SIDE:-}" ]; then
  EVENTS=compare
  TWIN_BINARY=$SIDE_BY_SIDE
  PAIR_WHAT="this binary / $SIDE_BY_SIDE"
elif [ "${TELEMETRY:-}" = compare ]; then
  EVENTS=compare
  TWIN_BINARY=$KEYGATE
  PAIR_WHAT="tracing (telemetry.otlp_endpoint set) / no tracing"
elif [ "${AUTH_COST:-}" = compare ]; then
  EVENTS=compare
  TWIN_BINARY=$KEYGATE
  TWIN_PATH=/open/bench
  PAIR_WHAT="auth and limits (/bench) / open route (/open/bench)"
else
  TWIN_BINARY=$KEYGATE
  PAIR_WHAT="usage and events"
fi
if [ "${EVENTS:-}" = compare ]; then
  stop_keygate # the twin's store is a copy, taken while nothing writes
  cp -r "$WORK/keygate" "$WORK/keygate-off"
  write_keygate_config "$WORK/keygate-off.toml" $((BASE_PORT + 5)) $((BASE_PORT + 6)) "sqlite://$WORK/keygate-off/keygate.db" "memory://"
  if [ "${TELEMETRY:-}" = compare ]; then
    printf '[telemetry]\notlp_endpoint = "http://127.0.0.1:%s"\n' "$UPSTREAM_PORT" >>"$WORK/keygate.toml"
  elif [ "${AUTH_COST:-}" = compare ] && [ -n "${AUTH_CONFIG:-}" ]; then
    printf '%s\n' "$AUTH_CONFIG" >>"$WORK/keygate.toml"
  elif [ -z "${SIDE_BY_SIDE:-}${TWIN_PATH:-}" ]; then
    printf '[usage]\nenabled = false\n[events]\nenabled = false\n' >>"$WORK/keygate-off.toml"
  fi
  start_keygate "$KEYGATE"
  ON_PID=$KEYGATE_PID
  KEYGATE_PORT=$((BASE_PORT + 5)) KEYGATE_ADMIN_PORT=$((BASE_PORT + 6)) start_keygate "$TWIN_BINARY" "$WORK/keygate-off.toml"
  OFF_PID=$KEYGATE_PID
  # The twin answers as intended too: 200 with rate-limit headers, 401 without a key.
  python3 - $((BASE_PORT + 5)) "$first_key" <<'PYCHECK'
import http.client, sys
port, key = int(sys.argv[1]), sys.argv[2]
def get(headers):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/bench", headers=headers)
    r = c.getresponse()
    return r.status, r.getheader("X-RateLimit-Limit"), r.read()
ok, limit, _ = get({"X-API-Key": key})
refused, _, body = get({})
assert ok == 200 and limit, f"twin with a key: {ok}, X-RateLimit-Limit {limit}"
assert refused == 401 and b"MISSING_API_KEY" in body, f"twin without a key: {refused} {body!r}"
PYCHECK
  run_pair() { # round
    local connections=$((CONNECTIONS / 2)) on_start off_start twin_path=${TWIN_PATH:-/bench}
    [ -n "${ALONE:-}" ] && connections=$CONNECTIONS
    local args=(-t1 -c"$connections" -s "$WORK/keys.lua" --latency)
    # Warm-up, both at once; before the first round, long enough for both
    # caches to fill and for the on twin to fan out the set-up's 10,000
    # key.created events.
    local warm_up=2s
    [ "$1" = 1 ] && warm_up=8s
    BENCH_KEYS="$WORK/keys.txt" "${PIN_LOAD[@]}" wrk "${args[@]}" -d$warm_up "http://127.0.0.1:$KEYGATE_PORT/bench" >/dev/null &
    BENCH_KEYS="$WORK/keys.txt" BENCH_PATH=$twin_path "${PIN_LOAD[@]}" wrk "${args[@]}" -d$warm_up "http://127.0.0.1:$((BASE_PORT + 5))$twin_path" >/dev/null &
    wait_jobs
    on_start=$(cpu_ticks "$ON_PID") off_start=$(cpu_ticks "$OFF_PID")
    BENCH_KEYS="$WORK/keys.txt" "${PIN_LOAD[@]}" wrk "${args[@]}" -d"$DURATION" "http://127.0.0.1:$KEYGATE_PORT/bench" >"$WORK/on-$1.wrk" &
    # ALONE=1: one after the other, each with the proxy CPU to itself.
    [ -n "${ALONE:-}" ] && wait_jobs
    BENCH_KEYS="$WORK/keys.txt" BENCH_PATH=$twin_path "${PIN_LOAD[@]}" wrk "${args[@]}" -d"$DURATION" "http://127.0.0.1:$((BASE_PORT + 5))$twin_path" >"$WORK/off-$1.wrk" &
    wait_jobs
    for mode in on off; do
      local pid_var=${mode^^}_PID start_var=${mode}_start
      awk -v label="8. round $1, $PAIR_WHAT $mode" -v ticks=$(($(cpu_ticks "${!pid_var}") - ${!start_var})) '
        /requests in/ { requests = $1 } /^Requests\/sec/ { rps = $2 } $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 } /Non-2xx/ { bad = $NF }
        END { printf "%s\t%s\t%s\t%s\t%d\t%.2f\n", label, rps, p50, p99, bad, ticks * 10000 / requests }
      ' "$WORK/$mode-$1.wrk" | tee -a "$WORK/results.tsv" | awk -F'\t' '{printf "  %s: %s req/s, p99 %s, %s CPU us per request\n", $1, $2, $4, $6}' >&2
    done
  }
  wait_jobs() { # the wrk runs in the background, not the servers
    for job in $(jobs -p); do
      case " ${PIDS[*]} " in *" $job "*) ;; *) wait "$job" ;; esac
    done
  }
  for round in $(seq 1 "${ROUNDS:-3}"); do run_pair "$round"; done
fi

print_results
awk -F'\t' -v what="${PAIR_WHAT:-usage and events}" '
  $1 ~ /^3\./ { nginx = $2 }
  $1 ~ /^4\./ { keygate = $2 }
  $1 ~ /^4a\./ { open = $2 }
  $1 ~ /^2b\./ { bare = $2 }
  $1 ~ /^6\./ { baseline = $2 }
  $1 ~ /^7\./ { again = $2 }
  $1 ~ /^8\./ { split($1, words, " "); r = words[3]; sub(/,/, "", r); if ($1 ~ / on$/) on[r] = $6; else off[r] = $6 }
  END {
    rounds = 0
    for (r = 1; r in on; r++) if (on[r] > 0) { rounds++; ratio[rounds] = off[r] / on[r]; printf "round %s: CPU per request off / on = %.3f\n", r, ratio[rounds] }
    if (rounds > 0) {
      for (i = 1; i <= rounds; i++) for (j = i + 1; j <= rounds; j++) if (ratio[j] < ratio[i]) { t = ratio[i]; ratio[i] = ratio[j]; ratio[j] = t }
      median = rounds % 2 ? ratio[(rounds + 1) / 2] : (ratio[rounds / 2] + ratio[rounds / 2 + 1]) / 2
      printf "%s, on / off (throughput on one CPU: CPU per request off / on), median of %d rounds: %.3f\n", what, rounds, median
    }
    if (nginx > 0) printf "\nkeygate (case 4) / nginx with auth (case 3): %.2f\n", keygate / nginx
    if (open > 0) printf "keygate with auth (case 4) / keygate open route (case 4a): %.3f\n", keygate / open
    if (bare > 0) printf "keygate open route (case 4a) / bare hyper proxy (case 2b): %.3f\n", open / bare
    if (baseline > 0) printf "keygate (mean of cases 4 and 7) / baseline (case 6): %.3f\n", (keygate + again) / 2 / baseline
  }
' "$WORK/results.tsv"
