#!/usr/bin/env bash
# A profile-guided release build of keygate, for production (issue 16;
# BENCHMARKS.md, "Profile-guided builds"; docs/decisions.md).
#
# 1. builds keygate with instrumentation (`-Cprofile-generate`);
# 2. runs it under the gateway's traffic: scripts/bench/gateway.sh (valid
#    keys, the open route, invalid keys; SQLite and the memory limiter) and,
#    when PostgreSQL and Redis answer, scripts/bench/multinode.sh (the same
#    on PostgreSQL and Redis), a few seconds a case;
# 3. merges the profile with the toolchain's own llvm-profdata (rustup's
#    llvm-tools component, installed if missing: it must match rustc's LLVM);
# 4. builds keygate again with the profile (`-Cprofile-use`).
#
# The compiler then lays out and inlines the code the way that traffic runs
# it. It takes two release builds and the training (about 20 minutes on 2
# cores) and prints the binary's path: target/pgo/use/release/keygate. The
# builds have target directories of their own, so the README's plain build
# is not disturbed.
#
# Usage: bash scripts/build-pgo.sh   (TRAIN_DURATION=5s)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGO_DIR="$ROOT/target/pgo"
TRAIN_DURATION=${TRAIN_DURATION:-5s}

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "installing rustup's llvm-tools (llvm-profdata matching rustc's LLVM)" >&2
  rustup component add llvm-tools
fi

rm -rf "$PGO_DIR/profiles" "$PGO_DIR"/*.profdata
mkdir -p "$PGO_DIR/profiles"
echo "1/4 building keygate with instrumentation" >&2
RUSTFLAGS="-Cprofile-generate=$PGO_DIR/profiles" \
  cargo build --release --bin keygate --target-dir "$PGO_DIR/generate" -q --manifest-path "$ROOT/Cargo.toml"

echo "2/4 training on the gateway's traffic" >&2
export KEYGATE_BINARY="$PGO_DIR/generate/release/keygate"
train() { # name, script, settings...
  local log="$PGO_DIR/train-$1.log" script=$2
  shift 2
  env "$@" DURATION="$TRAIN_DURATION" CONNECTIONS=32 bash "$ROOT/scripts/bench/$script" >"$log" 2>&1 ||
    { echo "the training run failed; its output is in $log" >&2; exit 1; }
}
train gateway gateway.sh
if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  train multinode multinode.sh REVOCATIONS=0
else
  echo "    PostgreSQL or Redis is not on its default port: trained on the embedded node only" >&2
fi
unset KEYGATE_BINARY

echo "3/4 merging the profile" >&2
# Named by its content: a new profile is a new flag, so cargo rebuilds every crate with it.
"$profdata" merge -o "$PGO_DIR/merged.profdata" "$PGO_DIR/profiles"
profile="$PGO_DIR/$(sha256sum "$PGO_DIR/merged.profdata" | cut -c1-16).profdata"
mv "$PGO_DIR/merged.profdata" "$profile"

echo "4/4 building keygate with the profile" >&2
RUSTFLAGS="-Cprofile-use=$profile" \
  cargo build --release --bin keygate --target-dir "$PGO_DIR/use" -q --manifest-path "$ROOT/Cargo.toml"
echo "$PGO_DIR/use/release/keygate"
