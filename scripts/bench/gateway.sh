#!/usr/bin/env bash
# keygate's gateway against nginx, in one run, with wrk on loopback.
#
# Five cases against the same tiny upstream (an nginx `return 200`):
#   1. direct to the upstream;
#   2. nginx as a plain reverse proxy;
#   3. nginx doing API-key auth: `map` over 10,000 keys plus `limit_req` per key;
#   4. keygate with 10,000 valid keys cycling, each checked for scope and rate limit;
#   5. keygate rejecting invalid keys (bad checksum).
# With BASELINE=/path/to/another/keygate (e.g. built from the commit before a
# change), two more cases on the same store, config and CPU:
#   6. case 4 with the baseline binary;
#   7. case 4 with this binary again, so that drift during the run shows.
# The proxy under test gets one CPU (taskset), wrk and the upstream the other,
# so nginx (one worker) and keygate (tokio sees one CPU) compete on equal terms.
# Access logs are off on both sides: this measures the proxy, not the disk.
# With EVENTS=compare, three more cases on the same store and keys (issue 7):
#   8. case 4 with usage recording and events off (`usage.enabled = false`,
#      `events.enabled = false`): no counters, no outbox, no scans;
#   9. case 4 again, with both on, so that drift shows.
#
# Usage: bash scripts/bench/gateway.sh        (DURATION=10s CONNECTIONS=64 KEYS=10000)
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

# The tiny upstream, shared by every case.
start_nginx upstream "server { listen 127.0.0.1:$UPSTREAM_PORT; location / { return 200 'ok\n'; } }" "${PIN_LOAD[@]}"
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
BENCH_KEYS="$WORK/keys.txt" run_wrk "3. nginx map+limit_req" "http://127.0.0.1:$NGINX_AUTH_PORT/bench" "$WORK/keys.lua"
BENCH_KEYS="$WORK/keys.txt" run_wrk "4. keygate valid keys" "http://127.0.0.1:$KEYGATE_PORT/bench" "$WORK/keys.lua"
BENCH_KEYS="$WORK/invalid.txt" run_wrk "5. keygate invalid keys" "http://127.0.0.1:$KEYGATE_PORT/bench" "$WORK/keys.lua"
if [ -n "${BASELINE:-}" ]; then
  stop_keygate
  start_keygate "$BASELINE"
  BENCH_KEYS="$WORK/keys.txt" run_wrk "6. baseline keygate valid keys" "http://127.0.0.1:$KEYGATE_PORT/bench" "$WORK/keys.lua"
  stop_keygate
  start_keygate "$KEYGATE"
  BENCH_KEYS="$WORK/keys.txt" run_wrk "7. keygate valid keys again" "http://127.0.0.1:$KEYGATE_PORT/bench" "$WORK/keys.lua"
fi
if [ "${EVENTS:-}" = compare ]; then
  { cat "$WORK/keygate.toml"; printf '[usage]\nenabled = false\n[events]\nenabled = false\n'; } >"$WORK/keygate-quiet.toml"
  stop_keygate
  start_keygate "$KEYGATE" "$WORK/keygate-quiet.toml"
  BENCH_KEYS="$WORK/keys.txt" run_wrk "8. keygate, usage and events off" "http://127.0.0.1:$KEYGATE_PORT/bench" "$WORK/keys.lua"
  stop_keygate
  start_keygate "$KEYGATE"
  BENCH_KEYS="$WORK/keys.txt" run_wrk "9. keygate, usage and events on" "http://127.0.0.1:$KEYGATE_PORT/bench" "$WORK/keys.lua"
fi

print_results
awk -F'\t' '
  $1 ~ /^3\./ { nginx = $2 }
  $1 ~ /^4\./ { keygate = $2 }
  $1 ~ /^6\./ { baseline = $2 }
  $1 ~ /^7\./ { again = $2 }
  $1 ~ /^8\./ { quiet = $2 }
  $1 ~ /^9\./ { on_again = $2 }
  END {
    if (quiet > 0) printf "usage and events on (mean of cases 4 and 9) / off (case 8): %.3f\n", (keygate + on_again) / 2 / quiet
    if (nginx > 0) printf "\nkeygate (case 4) / nginx with auth (case 3): %.2f\n", keygate / nginx
    if (baseline > 0) printf "keygate (mean of cases 4 and 7) / baseline (case 6): %.3f\n", (keygate + again) / 2 / baseline
  }
' "$WORK/results.tsv"
