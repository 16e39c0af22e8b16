#!/usr/bin/env python3
"""What PostgreSQL's backend spends on a usage flush, by the shape of its writes.

The usage flush (crates/keygate-store/src/sql/usage.rs, `record_usage`)
upserts each key's row of the current minute, so at 10,000 keys in use and
a flush every 5 s a row is updated twelve times a minute. This measures the
backend's own CPU (from /proc, so it runs on the database's machine) for
that minute of flushes in a schema of its own, with the tables shaped as the
migrations shape them (crates/keygate-store/migrations/postgres/), for:

  1. the upsert as the store writes it (ROWS rows per statement, bound
     values, as `ROWS_PER_STATEMENT` in crates/keygate-store/src/sql.rs)
     against the same rows as five arrays (`UNNEST`);
  2. the upsert at `fillfactor` 100, 80 (migration 0017) and 50, over four
     minutes: how many updates stay on their page (HOT);
  3. a design not built: each flush as one row of arrays (a staging table),
     folded into the minutes once a minute, and what reading one key then
     costs.

Usage: pip install 'psycopg[binary]'; python3 scripts/bench/usage_writes.py
(KEYS=10000, ROWS=50, KEYGATE_POSTGRES_URL as the test suite reads it). The figures
are in BENCHMARKS.md ("What in case 2's tail is usage's").
"""
import os
import time

import psycopg

KEYS = int(os.environ.get("KEYS", "10000"))
ROWS = int(os.environ.get("ROWS", "50"))
URL = os.environ.get("KEYGATE_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
SCHEMA = f"kg_usage_writes_{os.getpid()}"
WORKSPACE = "ws_01kbench0000000000000000"
MINUTE = 1_796_000_000 // 60 * 60
FLUSHES_A_MINUTE = 12
UPSERT_END = " ON CONFLICT (key_id, minute, outcome) DO UPDATE SET count = usage_minutes.count + excluded.count"
ARRAYS = "SELECT * FROM UNNEST(%s::text[], %s::text[], %s::int8[], %s::text[], %s::int8[])"

conn = psycopg.connect(URL, autocommit=True)
cur = conn.cursor()
backend = cur.execute("SELECT pg_backend_pid()").fetchone()[0]
keys = [f"key_01kbench{i:016d}" for i in range(KEYS)]


def backend_cpu():
    fields = open(f"/proc/{backend}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(what, work, times):
    """Backend CPU seconds for `times` runs of `work`, after one unmeasured run."""
    work()
    before = backend_cpu()
    for _ in range(times):
        work()
    spent = backend_cpu() - before
    print(f"  {what}: {spent:.2f} s of backend CPU for {times}", flush=True)
    return spent


def minutes_table(fillfactor):
    cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}; SET search_path = {SCHEMA}")
    cur.execute(
        "CREATE TABLE usage_minutes (key_id TEXT NOT NULL, workspace_id TEXT NOT NULL, minute BIGINT NOT NULL, "
        "outcome TEXT NOT NULL, count BIGINT NOT NULL, PRIMARY KEY (key_id, minute, outcome)) "
        f"WITH (fillfactor = {fillfactor})"
    )
    cur.execute("CREATE INDEX usage_minutes_by_age ON usage_minutes (minute)")


def arrays(part, minute):
    n = len(part)
    return [part, [WORKSPACE] * n, [minute] * n, ["admitted"] * n, [1] * n]


def flush_as_values(minute=MINUTE):
    with conn.transaction():
        for start in range(0, KEYS, ROWS):
            part = keys[start : start + ROWS]
            values = ",".join(["(%s,%s,%s,%s,%s)"] * len(part))
            params = [v for key in part for v in (key, WORKSPACE, minute, "admitted", 1)]
            cur.execute(
                f"INSERT INTO usage_minutes (key_id, workspace_id, minute, outcome, count) VALUES {values}{UPSERT_END}",
                params,
                binary=True,
            )


def flush_as_arrays(minute=MINUTE):
    with conn.transaction():
        for start in range(0, KEYS, ROWS):
            cur.execute(
                f"INSERT INTO usage_minutes (key_id, workspace_id, minute, outcome, count) {ARRAYS}{UPSERT_END}",
                arrays(keys[start : start + ROWS], minute),
                binary=True,
            )


def statement_shapes():
    print(f"1. a minute of flushes ({FLUSHES_A_MINUTE} of {KEYS} keys), rows already there:")
    minutes_table(80)
    for _ in range(2):
        measured(f"{ROWS} rows of bound values a statement (as the store writes)", flush_as_values, FLUSHES_A_MINUTE)
        measured(f"{ROWS} rows as five arrays a statement (UNNEST)", flush_as_arrays, FLUSHES_A_MINUTE)


def fillfactors():
    print("2. four minutes of flushes, each minute's rows new at its first flush:")
    for fillfactor in (100, 80, 50):
        minutes_table(fillfactor)
        before = backend_cpu()
        for minute in range(4):
            for _ in range(FLUSHES_A_MINUTE):
                flush_as_arrays(MINUTE + 60 * minute)
        spent = (backend_cpu() - before) / 4
        cur.execute("SELECT pg_stat_force_next_flush()")
        updated, hot = cur.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'usage_minutes'::regclass"
        ).fetchone()
        size = cur.execute("SELECT pg_total_relation_size('usage_minutes')").fetchone()[0]
        print(
            f"  fillfactor {fillfactor}: {spent:.2f} s of backend CPU a minute, "
            f"{100 * hot / max(updated, 1):.0f} % of updates HOT, {size >> 10} KiB with indexes",
            flush=True,
        )


def staging():
    print("3. not built: each flush one row of arrays, folded into the minutes once a minute:")
    minutes_table(80)
    cur.execute(
        "CREATE TABLE usage_staged (id BIGSERIAL PRIMARY KEY, keys TEXT[], workspaces TEXT[], "
        "minutes INT8[], outcomes TEXT[], counts INT8[])"
    )
    flush_as_arrays()

    def stage():
        cur.execute(
            "INSERT INTO usage_staged (keys, workspaces, minutes, outcomes, counts) VALUES (%s, %s, %s, %s, %s)",
            arrays(keys, MINUTE),
            binary=True,
        )

    unnest = "UNNEST(s.keys, s.workspaces, s.minutes, s.outcomes, s.counts) AS u(k, w, m, o, c)"

    def fold():
        with conn.transaction():
            cur.execute(
                "INSERT INTO usage_minutes (key_id, workspace_id, minute, outcome, count) "
                f"SELECT u.k, MIN(u.w), u.m, u.o, SUM(u.c) FROM usage_staged s, {unnest} GROUP BY u.k, u.m, u.o{UPSERT_END}"
            )

    def read_one_key():
        cur.execute(f"SELECT u.m, u.o, SUM(u.c) FROM usage_staged s, {unnest} WHERE u.k = %s GROUP BY 1, 2", [keys[5]])
        cur.fetchall()

    measured("staging a flush as one row", stage, FLUSHES_A_MINUTE)
    cur.execute(f"DELETE FROM usage_staged WHERE id > {FLUSHES_A_MINUTE}")
    measured(f"reading one key's minutes from {FLUSHES_A_MINUTE} staged rows", read_one_key, 5)
    measured(f"folding {FLUSHES_A_MINUTE} staged rows into the minutes (rows kept, so it can repeat)", fold, 3)


try:
    statement_shapes()
    fillfactors()
    staging()
finally:
    cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
