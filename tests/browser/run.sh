#!/usr/bin/env bash
# Real-browser WHIP/WHEP test: runs whip_whep.mjs inside a fresh network namespace that has only
# loopback (so Chromium's ICE sees 127.0.0.1 and nothing else) and a fresh PID namespace (so every
# process started inside, ils-control, the ils-engine it spawns, Chromium, dies with it).
#
# Usage: bash tests/browser/run.sh          the real test against target/{release,debug}/ils-control
#        bash tests/browser/run.sh --mock   self-test of page + harness, no ils (mock WHIP/WHEP server)
# Env:   ILS_CONTROL_BIN overrides the binary; see whip_whep.mjs for the other knobs.
#        ILS_SESSION_TEST=1 also runs the ILS session scenario (ils_session.mjs, issue 5) after it;
#        ILS_SESSION_ONLY=1 runs only that scenario (its summary is the last line). With --mock the
#        scenario runs against its own stand-in server (checks the app pages, not ils).
# Needs: root (or unprivileged user namespaces), /usr/bin/chromium, node >= 20 (tools/test.sh installs them).
# Exit:  0 when every check passed; the last line is "browser: N passed, M failed".
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$HERE"

fail() { echo "run.sh: $*" >&2; echo "browser: 0 passed, 1 failed"; exit 1; }

MODE=control
[[ "${1:-}" == "--mock" ]] && MODE=mock

command -v node >/dev/null || fail "node not found (tools/test.sh installs it)"
[[ -x "${CHROMIUM:-/usr/bin/chromium}" ]] || fail "${CHROMIUM:-/usr/bin/chromium} not found (tools/test.sh installs it)"
if [[ ! -d node_modules/playwright-core ]]; then
  echo "run.sh: installing playwright-core (npm ci)"
  npm ci --no-audit --no-fund >/dev/null || fail "npm ci failed in $HERE"
fi

if [[ "$MODE" == control && -z "${ILS_CONTROL_BIN:-}" ]]; then
  # Newer of target/{release,debug}/ils-control (same rule as ils_tests::proc::workspace_bin).
  TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
  best=""
  for p in "$TARGET/release/ils-control" "$TARGET/debug/ils-control"; do
    [[ -x "$p" ]] || continue
    if [[ -z "$best" || "$p" -nt "$best" ]]; then best="$p"; fi
  done
  [[ -n "$best" ]] || fail "no ils-control binary in $TARGET/{release,debug}: cargo build --release -p ils-control"
  ILS_CONTROL_BIN="$best"
fi
export ILS_CONTROL_BIN="${ILS_CONTROL_BIN:-}"

ART="${ILS_ARTIFACTS:-$HERE/artifacts}"
mkdir -p "$ART"
# Each scenario clears only its own files: the WHIP/WHEP test's (everything but ils-*) before
# it runs, the ILS session's (ils-*) before that one runs, so running one after the other
# (cargo test runs both into this folder) keeps both sets.
clear_whip_whep_artifacts() {
  local f
  for f in "$ART"/*.png "$ART"/*.sdp "$ART"/*.json "$ART"/*.log "$ART"/*.txt; do
    [[ -e "$f" && "$(basename "$f")" != ils-* ]] && rm -f "$f"
  done
  return 0
}
export ILS_ARTIFACTS="$ART"
DATA="$(mktemp -d /tmp/ils-browser-data.XXXXXX)"
trap 'rm -rf "$DATA"' EXIT
export ILS_DATA_DIR="$DATA"
export ILS_HTTP="${ILS_HTTP:-127.0.0.1:18080}"
NODE_ARGS=(whip_whep.mjs)
[[ "$MODE" == mock ]] && NODE_ARGS+=(--mock)

# Namespaces: network (loopback only) + PID (pid 1 is bash below; when it exits the kernel kills
# everything left inside, e.g. the ils-engine that a SIGKILLed control leaves running on purpose).
UNSHARE=(unshare --net --pid --fork --kill-child --mount-proc)
if [[ "$(id -u)" != 0 ]]; then UNSHARE=(unshare --user --map-root-user --net --pid --fork --kill-child --mount-proc); fi
"${UNSHARE[@]}" true 2>/dev/null || fail "cannot create namespaces with: ${UNSHARE[*]} (run as root)"

# run_node LOG WHAT TITLE ARGS...: `node ARGS...` inside the namespaces (loopback up), its output
# also in LOG; returns node's exit status. When the last line is no summary ("browser...: N passed,
# M failed"), it says WHAT died, prints a failing TITLE summary, sets NODE_SUMMARY=0 and returns 1.
run_node() {
  local logf="$1" what="$2" title="$3" rc
  shift 3
  NODE_SUMMARY=1
  set +e
  timeout --kill-after=10 "$((ILS_TEST_TIMEOUT_S + 60))" "${UNSHARE[@]}" bash -c '
    set -e
    ip link set lo up
    node "$@"
  ' bash "$@" 2>&1 | tee "$logf"
  rc=${PIPESTATUS[0]}
  set -e
  if ! tail -n 1 "$logf" | grep -Eq '^browser.*: [0-9]+ passed, [0-9]+ failed$'; then
    echo "run.sh: $what died without a summary (exit $rc)"
    echo "$title: 0 passed, 1 failed"
    NODE_SUMMARY=0
    return 1
  fi
  return "$rc"
}

# The ILS session scenario (ils_session.mjs), same namespaces; its log is $ART/ils-session.log.
run_session() {
  local args=(ils_session.mjs)
  [[ "$MODE" == mock ]] && args+=(--mock)
  echo "run.sh: ILS session scenario (${args[*]}), ${ILS_CONTROL_BIN:+control $ILS_CONTROL_BIN, }http $ILS_HTTP"
  run_node "$ART/ils-session.log" "the ILS session scenario" "browser ils session" "${args[@]}"
}
if [[ "${ILS_SESSION_ONLY:-0}" == 1 ]]; then
  export ILS_TEST_TIMEOUT_S="${ILS_TEST_TIMEOUT_S:-240}"
  rm -f "$ART"/ils-*
  run_session && exit 0 || exit 1
fi

echo "run.sh: mode $MODE, ${ILS_CONTROL_BIN:+control $ILS_CONTROL_BIN, }http $ILS_HTTP, artifacts $ART"
clear_whip_whep_artifacts
export ILS_TEST_TIMEOUT_S="${ILS_TEST_TIMEOUT_S:-240}"
rc=0
run_node "$ART/run.log" "the test" "browser" "${NODE_ARGS[@]}" || rc=$?
[[ "$NODE_SUMMARY" == 1 ]] || exit 1
if [[ "${ILS_SESSION_TEST:-0}" == 1 ]]; then
  srun=0
  rm -f "$ART"/ils-*
  run_session || srun=$?
  if [[ "$srun" != 0 && "$rc" == 0 ]]; then rc=$srun; fi
fi
exit "$rc"
