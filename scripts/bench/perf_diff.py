#!/usr/bin/env python3
"""Where two profiles of keygate differ, in microseconds per request.

Takes two `perf record` files (e.g. PROFILE_DIR's 4a.data and 4.data from
scripts/bench/gateway.sh) and the request rate each was taken at, scales
each symbol's share of the samples to microseconds a request (one CPU:
1e6 / rate), and prints the totals by crate, then the symbols that grew
most. With --symbol, it splits that one symbol by source line instead,
which needs a build with line tables:

    CARGO_TARGET_DIR=/tmp/dbg CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \\
        cargo build --release -p keygate-cli

Kernel figures move by tenths of a microsecond between two runs of the same
binary (the machine's speed drifts, and cpu-clock samples land where
interrupts are enabled again); user-space ones are steadier
(BENCHMARKS.md, "Where auth's cost is, line by line").

Usage: perf_diff.py A.data RATE_A B.data RATE_B [--symbol NAME] [--top N]
"""

import argparse
import collections
import re
import subprocess

SAMPLE = re.compile(r"\s*([\d.]+)%\s+(.*)")


def report(path, sort, symbol):
    """`perf report`'s lines for one profile, sorted by `sort`."""
    command = ["perf", "report", "-i", path, "--no-children", "--stdio", "--sort", sort, "-F", f"overhead,{sort}"]
    if symbol:
        command += ["-S", symbol]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()


def per_request(path, rate, sort, symbol):
    """Microseconds a request per symbol (or source line)."""
    us_per_request = 1e6 / rate
    found = collections.Counter()
    for line in report(path, sort, symbol):
        match = SAMPLE.match(line)
        if match:
            found[match.group(2).strip()] += float(match.group(1)) * us_per_request / 100
    return found


def crate_of(symbol):
    """`[k] name` is the kernel's; otherwise the path's first segment."""
    if symbol.startswith("[k]"):
        return "kernel"
    name = symbol.removeprefix("[.]").strip().lstrip("<")
    match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
    return match.group(1) if match else name[:40]


def print_rows(a, b, names, top):
    for name in sorted(names, key=lambda n: -(b[n] - a[n]))[:top]:
        print(f"{a[name]:7.3f} {b[name]:7.3f} {b[name] - a[name]:+7.3f}  {name[:110]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("rate_a", type=float)
    parser.add_argument("b")
    parser.add_argument("rate_b", type=float)
    parser.add_argument("--symbol", help="split this symbol by source line")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    sort = "srcline" if args.symbol else "sym"
    a = per_request(args.a, args.rate_a, sort, args.symbol)
    b = per_request(args.b, args.rate_b, sort, args.symbol)
    print(f"us a request: a {sum(a.values()):.2f}, b {sum(b.values()):.2f}  (columns: a, b, b - a)")
    if not args.symbol:
        crates_a, crates_b = collections.Counter(), collections.Counter()
        for name in set(a) | set(b):
            crates_a[crate_of(name)] += a[name]
            crates_b[crate_of(name)] += b[name]
        print("-- by crate")
        print_rows(crates_a, crates_b, set(crates_a) | set(crates_b), args.top)
        print("-- by symbol")
    print_rows(a, b, set(a) | set(b), args.top)


if __name__ == "__main__":
    main()
