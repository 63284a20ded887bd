#!/usr/bin/env bash
# Runs every test of the workspace. Idempotent: installs what the tests need first.
# Usage: bash tools/test.sh        (CI calls this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component add clippy rustfmt >/dev/null 2>&1 || true

# ---- browser test prerequisites (owner: tests/browser; edit only inside this block) -------------
# Debian chromium + playwright-core for tests/browser (the real-browser WHIP/WHEP test that
# tests/tests/browser.rs runs). Idempotent: installs only what is missing; no prompts.
step "browser test prerequisites (chromium, node, playwright-core)"
if [[ ! -x /usr/bin/chromium ]] || ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_pkgs=()
  [[ -x /usr/bin/chromium ]] || apt_pkgs+=(chromium)
  command -v node >/dev/null 2>&1 || apt_pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || apt_pkgs+=(npm)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${apt_pkgs[@]}"
fi
if ! (cd tests/browser && node -e 'require.resolve("playwright-core")' >/dev/null 2>&1); then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi
# ---- end of browser test prerequisites ---------------------------------------------------------

step "format"
cargo fmt --all -- --check

step "build (all targets, release binaries used by the cross-process tests)"
cargo build --workspace --all-targets
cargo build --release -p ils-engine -p ils-control

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
