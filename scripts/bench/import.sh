#!/usr/bin/env bash
# `keygate keys import` (issue 21): KEYS keys (default 1,000,000) from one CSV
# file into a node on SQLite, then into a node on PostgreSQL, through the
# admin API as an operator runs it. The file mixes the kinds a migration
# brings, a quarter each: keys in keygate's format, legacy plaintext keys,
# SHA-256 in hex, SHA-256 in base64. Prints keys per second for each store,
# and for a re-run of the same file (every key already there).
#
# Usage: bash scripts/bench/import.sh   (KEYS=1000000 BATCH=1000)
# Needs PostgreSQL (KEYGATE_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test);
# it works in a schema of its own, dropped on exit.
set -euo pipefail

KEYS=${KEYS:-1000000}
BATCH=${BATCH:-1000}
BASE_PORT=${BASE_PORT:-18300}
# write_keygate_config names an upstream; nothing is proxied here.
UPSTREAM_PORT=$BASE_PORT
POSTGRES_URL=${KEYGATE_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}

source "$(dirname "$0")/common.sh"

SCHEMA="kg_import_$(date +%s)"
psql "$POSTGRES_URL" -qc "CREATE SCHEMA $SCHEMA"
trap 'psql "$POSTGRES_URL" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true; cleanup' EXIT

install_missing
build_keygate

echo "writing $KEYS rows" >&2
python3 - "$KEYS" "$WORK/keys.csv" <<'EOF'
import base64, hashlib, secrets, sys, zlib
n, path = int(sys.argv[1]), sys.argv[2]
alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
def base62(value, width):
    out = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(alphabet[digit])
    return "".join(reversed(out))
def own_key():
    body = "kg_live_" + "".join(secrets.choice(alphabet) for _ in range(32))
    return body + base62(zlib.crc32(body.encode()), 6)
with open(path, "w") as f:
    f.write("key,hash,name,scopes\n")
    for i in range(n):
        legacy = "acme_sk_%08d_%s" % (i, secrets.token_urlsafe(18))
        kind = i % 4
        if kind == 0:
            f.write("%s,,Own %d,read\n" % (own_key(), i))
        elif kind == 1:
            f.write("%s,,Legacy %d,read write\n" % (legacy, i))
        elif kind == 2:
            f.write(",%s,Hex %d,\n" % (hashlib.sha256(legacy.encode()).hexdigest(), i))
        else:
            f.write(",%s,Base64 %d,\n" % (base64.b64encode(hashlib.sha256(legacy.encode()).digest()).decode(), i))
EOF

start_node() { # name, store url, admin port
  mkdir -p "$WORK/$1"
  write_keygate_config "$WORK/$1.toml" $(($3 - 1)) "$3" "$2" "memory://"
  printf '[keys]\nlegacy = true\n' >>"$WORK/$1.toml"
  ADMIN_KEY=$(admin_key_for "$WORK/$1.toml")
  KEYGATE_CONFIG="$WORK/$1.toml" KEYGATE_LOG=warn "$KEYGATE" serve >"$WORK/$1.out" 2>"$WORK/$1.err" &
  PIDS+=($!)
  NODE_PID=$!
  wait_for_port "$3"
}

import_once() { # label, admin port, workspace
  local started ended summary
  started=$(date +%s.%N)
  summary=$(KEYGATE_URL="http://127.0.0.1:$2" KEYGATE_ADMIN_KEY="$ADMIN_KEY" \
    "$KEYGATE" keys import "$WORK/keys.csv" --workspace "$3" --batch-size "$BATCH" --json)
  ended=$(date +%s.%N)
  python3 - "$1" "$started" "$ended" "$KEYS" <<EOF
import json, sys
label, started, ended, keys = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
summary = json.loads('''$summary''')
seconds = ended - started
print("| %s | %d | %d | %d | %.1f | %.0f |" % (label, summary["imported"], summary["legacy"], summary["existing"], seconds, keys / seconds))
EOF
}

run_store() { # name, store url, admin port
  start_node "$1" "$2" "$3"
  local ws
  ws=$(curl -s -X POST "http://127.0.0.1:$3/v1/workspaces" -H "X-API-Key: $ADMIN_KEY" \
    -H 'Content-Type: application/json' -d '{"name": "Imported"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  import_once "$1, first run" "$3" "$ws" >>"$WORK/results.md"
  import_once "$1, re-run" "$3" "$ws" >>"$WORK/results.md"
  kill "$NODE_PID" && wait "$NODE_PID" 2>/dev/null || true
}

: >"$WORK/results.md"
echo "importing into SQLite" >&2
run_store sqlite "sqlite://$WORK/sqlite/keygate.db" $((BASE_PORT + 2))
echo "importing into PostgreSQL" >&2
run_store postgres "$POSTGRES_URL?options=-c%20search_path%3D$SCHEMA" $((BASE_PORT + 4))

echo
echo "| store, run | imported | of them legacy | already there | seconds | keys/s |"
echo "|---|---:|---:|---:|---:|---:|"
cat "$WORK/results.md"
