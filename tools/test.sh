#!/usr/bin/env bash
# Runs every test of the workspace. Idempotent: installs what the tests need first.
# Usage: bash tools/test.sh        (CI calls this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component add clippy rustfmt >/dev/null 2>&1 || true

step "format"
cargo fmt --all -- --check

step "build (all targets, release binaries used by the cross-process tests)"
cargo build --workspace --all-targets
cargo build --release -p ils-engine

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
