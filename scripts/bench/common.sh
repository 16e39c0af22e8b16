# Shared by the benchmark scripts: a scratch folder cleaned on exit, tools
# installed with apt-get when missing, CPU pinning, nginx, wrk and key creation.
# Source it; it sets ROOT, WORK, PIDS and PIN_PROXY / PIN_LOAD.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d /tmp/keygate-bench.XXXXXX)
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

install_missing() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v python3 >/dev/null || missing+=(python3)
  [ ${#missing[@]} -eq 0 ] && return
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${missing[*]} with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
PIN_PROXY=()
PIN_LOAD=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  PIN_PROXY=(taskset -c 1)
  PIN_LOAD=(taskset -c 0)
fi

wait_for_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

start_nginx() { # name, server block(s), pin
  local name=$1 servers=$2
  shift 2
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/$name/nginx.pid;
error_log $WORK/$name/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$name/body;
  proxy_temp_path $WORK/$name/proxy;
  fastcgi_temp_path $WORK/$name/fastcgi;
  uwsgi_temp_path $WORK/$name/uwsgi;
  scgi_temp_path $WORK/$name/scgi;
  keepalive_requests 100000;
  upstream tiny { server 127.0.0.1:$UPSTREAM_PORT; keepalive 128; }
  $servers
}
EOF
  "$@" "$NGINX" -c "$WORK/$name/nginx.conf" -e "$WORK/$name/error.log" &
  PIDS+=($!)
}

PROXY_LOCATION='proxy_pass http://tiny; proxy_http_version 1.1; proxy_set_header Connection "";'

run_wrk() { # label, url, [lua script]
  local label=$1 url=$2 script=${3:-}
  local args=(-t1 -c"$CONNECTIONS" -d"$DURATION" --latency)
  [ -n "$script" ] && args+=(-s "$script")
  # WARMUP (default 2s) before each case: a longer one lets a node that has
  # just created the keys finish that work first (BENCHMARKS.md, issue 18).
  "${PIN_LOAD[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP:-2s}" ${script:+-s "$script"} "$url" >/dev/null # warm-up
  local perf_pid=""
  if [ -n "${PROFILE_DIR:-}" ] && [ -n "${PROFILE_AS:-}" ] && [ -n "${KEYGATE_PID:-}" ]; then
    mkdir -p "$PROFILE_DIR"
    # shellcheck disable=SC2086 # PERF_ARGS is a list of words
    perf ${PERF_ARGS:-record -q -F 1999} -p "$KEYGATE_PID" -o "$PROFILE_DIR/$PROFILE_AS.data" -- sleep "${DURATION%s}" 2>/dev/null &
    perf_pid=$!
  fi
  # The span in UTC, to line the run up with other logs (PostgreSQL's, keygate's).
  echo "  $label: measuring from $(date -u +%T)" >&2
  "${PIN_LOAD[@]}" wrk "${args[@]}" "$url" >"$WORK/$label.wrk"
  echo "  $label: measured until $(date -u +%T)" >&2
  [ -z "$perf_pid" ] || wait "$perf_pid" || true
  local rps p50 p99 non2xx
  rps=$(awk '/^Requests\/sec/ {print $2}' "$WORK/$label.wrk")
  p50=$(awk '$1 == "50%" {print $2}' "$WORK/$label.wrk")
  p99=$(awk '$1 == "99%" {print $2}' "$WORK/$label.wrk")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/$label.wrk")
  printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$rps" "$p50" "$p99" "${non2xx:-0}" >>"$WORK/results.tsv"
  echo "  $label: $rps req/s, p50 $p50, p99 $p99, non-2xx ${non2xx:-0}" >&2
}

cpu_ticks() { # pid: user + system clock ticks of the process, all its threads
  awk '{print $14 + $15}' "/proc/$1/stat"
}

cpu_seconds_of() { # process name: user + system CPU seconds of every live process of that name
  awk -v name="($1)" -v hz="$(getconf CLK_TCK)" '$2 == name { ticks += $14 + $15 } END { printf "%.2f\n", ticks / hz }' /proc/[0-9]*/stat 2>/dev/null
}

create_keys() { # admin port, admin key, count, output file
  echo "creating $3 keys" >&2
  python3 - "$@" <<'EOF'
import http.client, json, sys
port, admin, count, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
conn = http.client.HTTPConnection("127.0.0.1", port)
def call(method, path, body):
    conn.request(method, path, json.dumps(body), {"X-API-Key": admin, "Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    assert response.status == 201, data
    return data
ws = call("POST", "/v1/workspaces", {"name": "bench"})["id"]
with open(out, "w") as f:
    for i in range(count):
        f.write(call("POST", f"/v1/workspaces/{ws}/keys", {"name": f"k{i}", "scopes": ["bench:read"]})["key"] + "\n")
EOF
}

write_keys_lua() { # cycles through the keys in $BENCH_KEYS, one per request, to $BENCH_PATH (/bench)
# Each request is written once, in `init`, not formatted per request: the
# formatting made wrk the limit at about 62,000 requests a second on one
# CPU, which case 3 (nginx with auth) reached (BENCHMARKS.md, issue 16).
cat >"$WORK/keys.lua" <<'EOF'
local requests = {}
function init(args)
  local path = os.getenv("BENCH_PATH") or "/bench"
  for line in io.lines(os.getenv("BENCH_KEYS")) do
    requests[#requests + 1] = wrk.format("GET", path, { ["X-API-Key"] = line })
  end
end
local i = 0
request = function()
  i = i % #requests + 1
  return requests[i]
end
EOF
}

build_keygate() { # KEYGATE_BINARY=path: that binary instead (another commit's, to compare)
  if [ -n "${KEYGATE_BINARY:-}" ]; then
    KEYGATE=$KEYGATE_BINARY
    return
  fi
  echo "building keygate (release)" >&2
  (cd "$ROOT" && cargo build --release --bin keygate -q)
  KEYGATE="$ROOT/target/release/keygate"
}

# A node for the benchmarks: one plan with a limit that is never reached, one
# route to the upstream on $UPSTREAM_PORT that needs a scope, and `/open`, the
# same upstream with `auth = false`.
write_keygate_config() { # file, gateway port, admin port, store url, limiter url
  # One sealing key for every node of a run (PostgreSQL requires one).
  [ -s "$WORK/secrets.key" ] || "$KEYGATE" secrets generate-key >"$WORK/secrets.key"
  cat >"$1" <<EOF
[secrets]
key_file = "$WORK/secrets.key"
[server]
gateway_addr = "127.0.0.1:$2"
admin_addr = "127.0.0.1:$3"
[store]
url = "$4"
[access_log]
target = "off"
[cache]
capacity = 100000
[security]
max_failed_attempts = 1000000000
[plans.bench]
limits = [{ requests = 100000000, per = "1h" }]
[limiter]
url = "$5"
default_plan = "bench"
[[routes]]
path = "/"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
scopes = ["bench:read"]
[[routes]]
path = "/open"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
auth = false
EOF
}

admin_key_for() { # config file
  KEYGATE_CONFIG="$1" "$KEYGATE" admin create-key --name bench --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}

print_results() { # the rows run_wrk (and the scripts) wrote to results.tsv, as a Markdown table
  echo
  echo "| case | req/s | p50 | p99 | non-2xx |"
  echo "|---|---:|---:|---:|---:|"
  awk -F'\t' '{printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5}' "$WORK/results.tsv"
}
