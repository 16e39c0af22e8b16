#!/usr/bin/env bash
# The dashboard's key list with 100,000 keys in one workspace (SQLite, the
# embedded default), with wrk on loopback:
#   1. the first page (newest 50 keys);
#   2. a deep page, 50,000 keys in (by cursor);
#   3. filtered by environment (`test`, 10% of the keys);
#   4. filtered by status `revoked` (1% of the keys, spread evenly);
#   5. filtered by status `expired` (no key matches: the worst case).
# Each page also counts the workspace's keys. The keys are written straight
# into the SQLite file (a copy of one key made through the API, with new ids
# and hashes), since creating 100,000 keys one API call at a time takes minutes.
#
# One connection: the latencies are what one person waits for a page.
# Usage: bash scripts/bench/dashboard.sh   (DURATION=5s CONNECTIONS=1 KEYS=100000)
set -euo pipefail

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-1}
KEYS=${KEYS:-100000}
BASE_PORT=${BASE_PORT:-18300}
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
  wait_for_port "$ADMIN_PORT"
}
start_node

echo "writing $KEYS keys into one workspace" >&2
WORKSPACE=$(python3 - "$ADMIN_PORT" "$ADMIN_KEY" "$WORK/keygate.db" "$KEYS" <<'EOF'
import http.client, json, os, sqlite3, sys
port, admin, db, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", port)
def call(method, path, body):
    conn.request(method, path, json.dumps(body), {"X-API-Key": admin, "Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    assert response.status == 201, data
    return data
ws = call("POST", "/v1/workspaces", {"name": "100k keys"})["id"]
template = call("POST", f"/v1/workspaces/{ws}/keys", {"name": "template", "scopes": ["invoices:read"]})["id"]
db = sqlite3.connect(db, timeout=30)
db.row_factory = sqlite3.Row
row = dict(db.execute("SELECT * FROM api_keys WHERE id = ?", (template,)).fetchone())
columns = list(row)
rows = []
for i in range(count):
    new = dict(row)
    # Ids sort like the real (time-ordered) ones: newer keys have larger ids.
    new["id"] = f"key_{i:026d}"
    new["lineage_id"] = new["id"]
    new["key_hash"] = os.urandom(32)
    new["name"] = f"service {i}"
    new["environment"] = "test" if i % 10 == 0 else "live"
    new["created_at"] = row["created_at"] - (count - i) * 1000
    if i % 100 == 7:
        new["revoked_at"] = row["created_at"]
        new["revoked_reason"] = "bench"
    rows.append(tuple(new[c] for c in columns))
db.executemany(f"INSERT INTO api_keys ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows)
db.commit()
print(ws)
EOF
)

# Sign in as a browser would: the sign-in form's token and cookie, then the session cookie.
curl -s -c "$WORK/jar" "http://127.0.0.1:$ADMIN_PORT/dashboard/sign-in" >"$WORK/sign-in.html"
TOKEN=$(sed -n 's/.*name="csrf" value="\([0-9a-f]*\)".*/\1/p' "$WORK/sign-in.html" | head -n 1)
curl -s -b "$WORK/jar" -c "$WORK/jar" -o /dev/null --data-urlencode "key=$ADMIN_KEY" --data-urlencode "csrf=$TOKEN" \
  "http://127.0.0.1:$ADMIN_PORT/dashboard/sign-in"
SESSION=$(awk '$6 == "kg_session" {print $7}' "$WORK/jar")
[ -n "$SESSION" ] || { echo "could not sign in" >&2; exit 1; }
KEYS_URL="http://127.0.0.1:$ADMIN_PORT/dashboard/workspaces/$WORKSPACE/keys"

cat >"$WORK/session.lua" <<EOF
wrk.headers["Cookie"] = "kg_session=$SESSION"
EOF

check_page() { # url, text the page must contain
  local page
  page=$(curl -s -H "Cookie: kg_session=$SESSION" "$1")
  grep -q "$2" <<<"$page" || { echo "unexpected page for $1" >&2; exit 1; }
}
DEEP_CURSOR=$(printf 'key_%026d' $((KEYS / 2)))
check_page "$KEYS_URL" "$((KEYS + 1)) keys in this workspace"  # and the template key
check_page "$KEYS_URL?status=revoked" 'class="badge revoked"'
check_page "$KEYS_URL?status=expired" "No keys match"

run_wrk "1. first page" "$KEYS_URL" "$WORK/session.lua"
run_wrk "2. page 50,000 keys deep" "$KEYS_URL?cursor=$DEEP_CURSOR" "$WORK/session.lua"
run_wrk "3. environment=test" "$KEYS_URL?environment=test" "$WORK/session.lua"
run_wrk "4. status=revoked (1%)" "$KEYS_URL?status=revoked" "$WORK/session.lua"
run_wrk "5. status=expired (none)" "$KEYS_URL?status=expired" "$WORK/session.lua"

print_results
