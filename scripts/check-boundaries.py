#!/usr/bin/env python3
"""The crate boundaries of docs/architecture.md, checked (run by scripts/test.sh).

Reads each crate's dependencies from `cargo metadata` and fails, naming the
rule, when a crate depends on a keygate crate it may not import, when the
pure core gains an I/O dependency, or when the server names the store's
`Store` trait outside where a node starts, app.rs and embedded.rs (it
reaches data through the engine; it may use the store's record and filter
types).
"""
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Which keygate crates each crate may depend on (normal dependencies).
MAY_IMPORT = {
    "keygate-core": set(),
    "keygate-store": {"keygate-core"},
    "keygate-limiter": {"keygate-core"},
    "keygate-engine": {"keygate-core", "keygate-store", "keygate-limiter"},
    "keygate-server": {"keygate-core", "keygate-store", "keygate-engine", "keygate-limiter"},
    "keygate-cli": {"keygate-core", "keygate-store", "keygate-engine", "keygate-limiter", "keygate-server"},
    # Publishable on its own: services use it without the server, which only
    # the optional `embedded` feature (an in-process node) brings.
    "keygate-client": {"keygate-core", "keygate-server"},
}
# Crates that do I/O, reach the clock's runtime or a network: never in the core.
IO_CRATES = {
    "tokio", "async-std", "futures", "sqlx", "redis", "hyper", "hyper-util", "axum", "reqwest",
    "tower", "rustls", "tokio-rustls", "tracing-appender", "figment", "mio", "socket2",
}
# Crates the engine (decisions, no HTTP) does without.
HTTP_CRATES = {"hyper", "hyper-util", "axum", "tower", "reqwest", "http", "askama", "utoipa"}


def main() -> int:
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    )
    failures = []
    for package in metadata["packages"]:
        name = package["name"]
        if name not in MAY_IMPORT:
            failures.append(f"{name}: not in docs/architecture.md's crate table")
            continue
        normal = {d["name"] for d in package["dependencies"] if d.get("kind") is None}
        for dep in sorted(d for d in normal if d.startswith("keygate-") and d not in MAY_IMPORT[name]):
            failures.append(f"{name} depends on {dep}, which it may not import")
        if name == "keygate-core":
            for dep in sorted(normal & IO_CRATES):
                failures.append(f"keygate-core (pure: no I/O) depends on {dep}")
        if name == "keygate-engine":
            for dep in sorted(normal & HTTP_CRATES):
                failures.append(f"keygate-engine (no HTTP) depends on {dep}")
    server = ROOT / "crates/keygate-server/src"
    # `Store` or any aggregate's trait (`KeyStore`, `UsageStore`, ...).
    trait = r"\b(Workspace|Key|Audit|Usage|Event|Webhook)?Store\b"
    store_trait = re.compile(rf"keygate_store::(\{{[^}}]*({trait})[^}}]*\}}|({trait}))")
    for path in sorted(server.rglob("*.rs")):
        if path.name in ("app.rs", "embedded.rs"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if store_trait.search(line):
                failures.append(f"{path.relative_to(ROOT)}:{number}: the server names a store trait; go through the engine")
    for failure in failures:
        print(f"boundary: {failure}", file=sys.stderr)
    if not failures:
        print(f"crate boundaries hold ({len(metadata['packages'])} crates)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
