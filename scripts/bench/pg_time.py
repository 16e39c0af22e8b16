#!/usr/bin/env python3
"""What PostgreSQL spent its time on between two moments, from its log.

Turn on statement durations first (and off after):

    psql -c "ALTER SYSTEM SET log_min_duration_statement = 1"; psql -c "SELECT pg_reload_conf()"

then line a benchmark's span up with the log (scripts/bench/common.sh's
run_wrk prints each case's span in UTC):

    python3 scripts/bench/pg_time.py 22:04:09 22:05:09 [/var/log/postgresql/postgresql-15-main.log]

It prints total milliseconds, statements and the longest one, per kind of
statement, the largest first. Statements under the threshold are not logged,
so the figures are a lower bound.
"""
import collections
import re
import sys

KINDS = [  # (what the statement contains, its name), first match wins
    ("INSERT INTO usage_minutes", "usage flush: minutes"),
    ("UPDATE api_keys SET last_used", "usage flush: last use"),
    ("INSERT INTO usage_key_windows", "roll-up: key windows"),
    ("INSERT INTO usage_rollups", "roll-up: key hours and days"),
    ("INSERT INTO usage_workspace_rollups", "roll-up: workspaces"),
    ("SUM(CASE WHEN u.minute", "events: anomaly scan"),
    ("events SET fanned_out", "events: fan-out"),
    ("FROM api_keys k JOIN workspaces", "key lookup"),
]
LINE = re.compile(
    r"^\S+ (\d\d:\d\d:\d\d)\.\d+ UTC \[\d+\] \S+ LOG:  duration: ([0-9.]+) ms  "
    r"(?:statement|execute [^:]*|parse [^:]*|bind [^:]*): (.*)"
)


def kind_of(sql):
    for needle, name in KINDS:
        if needle in sql:
            return name
    return " ".join(sql.split()[:4])[:60]


def main():
    start, end = sys.argv[1], sys.argv[2]
    log = sys.argv[3] if len(sys.argv) > 3 else "/var/log/postgresql/postgresql-15-main.log"
    totals = collections.defaultdict(lambda: [0, 0.0, 0.0])
    with open(log, errors="replace") as lines:
        for line in lines:
            match = LINE.match(line)
            if not match or not start <= match.group(1) <= end:
                continue
            ms = float(match.group(2))
            total = totals[kind_of(re.sub(r"\s+", " ", match.group(3)))]
            total[0] += 1
            total[1] += ms
            total[2] = max(total[2], ms)
    for name, (count, ms, longest) in sorted(totals.items(), key=lambda item: -item[1][1]):
        print(f"{ms:9.1f} ms  {count:5d} statements  longest {longest:7.1f} ms  {name}")


if __name__ == "__main__":
    main()
