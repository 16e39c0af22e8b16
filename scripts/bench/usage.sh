#!/usr/bin/env bash
# A workspace's usage series and top keys with 100,000 keys and 30 days of
# daily usage each (SQLite, the embedded default), with wrk on loopback:
#   1. the workspace's usage per day over 30 days;
#   2. top 10 keys by requests over 30 days;
#   3. top 10 keys by rejections over 30 days;
#   4. top 10 keys by requests today.
# Then the once-a-day move of every key window (300,000 rows), timed on the
# first top-keys call after the day changes.
# The keys and their usage are written straight into the SQLite file (keys
# copied from one made through the API; per-key day rollups, the workspace's
# rollups and the key windows computed to match), since recording 3 million
# key-days through the gateway would take hours.
#
# One connection: the latencies are what one caller waits.
# Usage: bash scripts/bench/usage.sh   (DURATION=5s CONNECTIONS=1 KEYS=100000 DAYS=30)
set -euo pipefail

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-1}
KEYS=${KEYS:-100000}
DAYS=${DAYS:-30}
BASE_PORT=${BASE_PORT:-18400}
UPSTREAM_PORT=$BASE_PORT

source "$(dirname "$0")/common.sh"
install_missing
build_keygate

GATEWAY_PORT=$((BASE_PORT + 1))
ADMIN_PORT=$((BASE_PORT + 2))
write_keygate_config "$WORK/keygate.toml" "$GATEWAY_PORT" "$ADMIN_PORT" "sqlite://$WORK/keygate.db" "memory://"
KEYGATE_CONFIG="$WORK/keygate.toml" "$KEYGATE" migrate >/dev/null
ADMIN_KEY=$(admin_key_for "$WORK/keygate.toml")

start_node() {
  KEYGATE_CONFIG="$WORK/keygate.toml" KEYGATE_LOG=warn "${PIN_PROXY[@]}" "$KEYGATE" serve >>"$WORK/keygate.out" 2>&1 &
  PIDS+=($!)
  NODE_PID=$!
  wait_for_port "$ADMIN_PORT"
}
start_node

echo "writing $KEYS keys with $DAYS days of usage into one workspace" >&2
WORKSPACE=$(python3 - "$ADMIN_PORT" "$ADMIN_KEY" "$WORK/keygate.db" "$KEYS" "$DAYS" <<'EOF'
import http.client, json, os, sqlite3, sys, time
port, admin, db, count, days = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
conn = http.client.HTTPConnection("127.0.0.1", port)
def call(method, path, body):
    conn.request(method, path, json.dumps(body), {"X-API-Key": admin, "Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    assert response.status == 201, data
    return data
ws = call("POST", "/v1/workspaces", {"name": "100k keys"})["id"]
template = call("POST", f"/v1/workspaces/{ws}/keys", {"name": "template"})["id"]
db = sqlite3.connect(db, timeout=30)
db.row_factory = sqlite3.Row
row = dict(db.execute("SELECT * FROM api_keys WHERE id = ?", (template,)).fetchone())
columns = list(row)
keys = []
for i in range(count):
    new = dict(row)
    new["id"] = f"key_{i:026d}"
    new["lineage_id"] = new["id"]
    new["key_hash"] = os.urandom(32)
    new["name"] = f"service {i}"
    new["created_at"] = row["created_at"] - (count - i) * 1000
    keys.append(tuple(new[c] for c in columns))
db.executemany(f"INSERT INTO api_keys ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", keys)
now = int(time.time())
today = now - now % 86400
rollups, workspace = [], {}
windows = {w: {} for w in (1, 7, 30)}
for i in range(count):
    key = f"key_{i:026d}"
    for d in range(days):
        day = today - d * 86400
        admitted = (i * 7 + d * 13) % 50 + 1
        refused = (i + d) % 5 if i % 10 == 0 else 0
        rollups.append((key, ws, 86400, day, "admitted", admitted))
        workspace[(day, "admitted")] = workspace.get((day, "admitted"), 0) + admitted
        if refused:
            rollups.append((key, ws, 86400, day, "RATE_LIMIT_EXCEEDED", refused))
            workspace[(day, "RATE_LIMIT_EXCEEDED")] = workspace.get((day, "RATE_LIMIT_EXCEEDED"), 0) + refused
        for w, totals in windows.items():
            if d < w:
                requests, rejected = totals.get(key, (0, 0))
                totals[key] = (requests + admitted + refused, rejected + refused)
db.executemany("INSERT INTO usage_rollups (key_id, workspace_id, grain, start, outcome, count) VALUES (?, ?, ?, ?, ?, ?)", rollups)
db.executemany("INSERT INTO usage_workspace_rollups (workspace_id, grain, start, outcome, count) VALUES (?, 86400, ?, ?, ?)",
               [(ws, day, outcome, n) for (day, outcome), n in workspace.items()])
for w, totals in windows.items():
    since = today - (w - 1) * 86400
    db.executemany("INSERT INTO usage_key_windows (key_id, workspace_id, days, since, requests, rejected) VALUES (?, ?, ?, ?, ?, ?)",
                   [(key, ws, w, since, r, j) for key, (r, j) in totals.items()])
db.execute("UPDATE usage_rollup_progress SET rolled_until = ?", (now - now % 60,))
db.commit()
print(ws)
EOF
)

cat >"$WORK/admin.lua" <<EOF
wrk.headers["X-API-Key"] = "$ADMIN_KEY"
EOF
BASE="http://127.0.0.1:$ADMIN_PORT/v1/workspaces/$WORKSPACE"
FROM=$(date -u -d "$((DAYS - 1)) days ago" +%Y-%m-%dT00:00:00Z)
check() { # url, text the answer must contain
  local answer
  answer=$(curl -s -H "X-API-Key: $ADMIN_KEY" "$1")
  grep -q "$2" <<<"$answer" || { echo "unexpected answer for $1: ${answer:0:300}" >&2; exit 1; }
}
check "$BASE/usage?granularity=day&from=$FROM" '"RATE_LIMIT_EXCEEDED"'
check "$BASE/top-keys?window=30d" '"requests"'
check "$BASE/top-keys?window=30d&by=rejections" '"rejected"'

run_wrk "1. usage per day, 30 days" "$BASE/usage?granularity=day&from=$FROM" "$WORK/admin.lua"
run_wrk "2. top keys by requests, 30 days" "$BASE/top-keys?window=30d" "$WORK/admin.lua"
run_wrk "3. top keys by rejections, 30 days" "$BASE/top-keys?window=30d&by=rejections" "$WORK/admin.lua"
run_wrk "4. top keys by requests, today" "$BASE/top-keys?window=1d" "$WORK/admin.lua"
print_results

# A day passes: every window is one day behind, so the next call moves all
# of them (the node's own job would do it within a minute of midnight).
python3 - "$WORK/keygate.db" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
db.execute("UPDATE usage_key_windows SET since = since - 86400")
db.commit()
EOF
for call in "first call, moving 300,000 windows" "second call"; do
  seconds=$(curl -s -o /dev/null -w '%{time_total}' -H "X-API-Key: $ADMIN_KEY" "$BASE/top-keys?window=30d")
  echo "top keys, $call: ${seconds} s"
done
