#!/usr/bin/env bash
# Run every fuzz target for SECS seconds (default 120) with libFuzzer, then minimise each corpus.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP=1 lets stable accept -Zsanitizer.
# Usage: bash tools/fuzz/run.sh [SECS] [target...]
set -uo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-120}; shift || true
TARGETS=${*:-"stun srtp rtp rtcp shm_event shm_command core_datagrams"}
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O --fuzz-dir tools/fuzz || exit 1
for t in $TARGETS; do
  case $t in core_datagrams|shm_command) len=8192 ;; *) len=1500 ;; esac
  mkdir -p "tools/fuzz/corpus/$t" "tools/fuzz/artifacts/$t"
  echo "==> $t for ${SECS}s (max_len $len)"
  cargo fuzz run -O --fuzz-dir tools/fuzz "$t" -- -max_total_time="$SECS" -max_len="$len" \
    -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 25
  echo "rc=${PIPESTATUS[0]}"
  # minimise: merge into a fresh directory, keep only inputs that add coverage
  tmp="tools/fuzz/corpus/$t.min"; rm -rf "$tmp"; mkdir -p "$tmp"
  cargo fuzz run -O --fuzz-dir tools/fuzz "$t" "$tmp" "tools/fuzz/corpus/$t" -- -merge=1 \
    -max_len="$len" -timeout=5 >/dev/null 2>&1 && { rm -rf "tools/fuzz/corpus/$t"; mv "$tmp" "tools/fuzz/corpus/$t"; }
  echo "corpus $t: $(ls tools/fuzz/corpus/$t | wc -l) files, $(du -sh tools/fuzz/corpus/$t | cut -f1)"
done
