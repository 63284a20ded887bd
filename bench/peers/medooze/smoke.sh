#!/usr/bin/env bash
# Smoke test of the Medooze peer with the real load tool: starts the peer on its own port,
# checks the HTTP error paths with curl and 300 mutated offers (fuzz.py), runs ils-load
# (audio and ils scenarios, default and ?layer= selection), asserts every viewer connected,
# 0 loss, latency measured and the right simulcast layer received, then stops the peer. Exit status 0 = all checks passed.
#
#   bench/peers/medooze/smoke.sh [--port 8095] [--core 0] [--viewers 20] [--load BIN]
#
# BIN defaults to target/release/ils-load (cargo build --release -p ils-load).
set -euo pipefail
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$DIR/../../.." && pwd)
PORT=8095
CORE=0
VIEWERS=20
LOAD="$ROOT/target/release/ils-load"
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT=${2:?}; shift 2 ;;
        --core) CORE=${2:?}; shift 2 ;;
        --viewers) VIEWERS=${2:?}; shift 2 ;;
        --load) LOAD=${2:?}; shift 2 ;;
        *) echo "smoke.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$LOAD" ] || { echo "smoke.sh: no $LOAD; run cargo build --release -p ils-load" >&2; exit 2; }
URL="http://127.0.0.1:$PORT"
OUT=$(mktemp -d /tmp/medooze-smoke.XXXXXX)
FAILS=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }
cleanup() { "$DIR/stop.sh" --port "$PORT" >/dev/null || true; }
trap cleanup EXIT

"$DIR/start.sh" --port "$PORT" --core "$CORE"
PID=$(cat "$DIR/.run/server-$PORT.pid")

# --- HTTP error paths -------------------------------------------------------------------
expect_status() { # name expected_status curl-args...
    local name=$1 want=$2; shift 2
    local got
    got=$(curl -s -o /dev/null -w '%{http_code}' "$@" || true)
    if [ "$got" = "$want" ]; then pass "$name -> $got"; else fail "$name: want $want, got $got"; fi
}
expect_status "garbage offer" 400 -X POST --data-binary 'garbage' "$URL/whip/smoke"
head -c 70000 /dev/zero | tr '\0' a >"$OUT/big"
expect_status "oversized offer" 413 -X POST --data-binary "@$OUT/big" "$URL/whep/smoke"
expect_status "bad layer" 400 -X POST --data-binary 'v=0' "$URL/whep/smoke?layer=3"
expect_status "bad room name" 400 -X POST --data-binary 'v=0' "$URL/whep/a%20b"
expect_status "unknown resource" 404 -X DELETE "$URL/whep/smoke/nope"
expect_status "unknown path" 404 "$URL/nope"
expect_status "wrong method" 405 "$URL/whep/smoke"
expect_status "health" 200 "$URL/health"

# Mutated offers: never a 5xx, nothing left over.
if python3 "$DIR/fuzz.py" "$URL" 300 >"$OUT/fuzz.log" 2>&1; then
    pass "300 mutated offers: $(tail -1 "$OUT/fuzz.log")"
else
    fail "fuzz.py (log $OUT/fuzz.log)"
fi

# --- real WebRTC load ---------------------------------------------------------------------
run_load() { # name scenario room
    local name=$1 scenario=$2 room=$3
    if "$LOAD" --target whip-whep "$URL" --scenario "$scenario" --room "$room" \
        --viewers "$VIEWERS" --duration 3 --engine-pid "$PID" --quiet --out "$OUT/$name" \
        >"$OUT/$name.log" 2>&1; then
        pass "ils-load $name ran"
    else
        fail "ils-load $name exited non-zero (log $OUT/$name.log)"; return
    fi
    local r="$OUT/$name/result.json"
    jq -e --argjson n "$VIEWERS" '.viewers_connected == $n and .publishers_connected == 1' "$r" >/dev/null \
        && pass "$name: $VIEWERS/$VIEWERS viewers connected" || fail "$name: viewers connected $(jq .viewers_connected "$r")"
    jq -e '.totals.lost == 0 and .totals.expected > 0 and .totals.decrypt_failures == 0' "$r" >/dev/null \
        && pass "$name: 0 lost of $(jq .totals.expected "$r")" || fail "$name: lost $(jq .totals.lost "$r") of $(jq .totals.expected "$r")"
    jq -e '.latency.count > 0' "$r" >/dev/null \
        && pass "$name: latency p50/p99 $(jq -r '"\(.latency.p50_us|floor)/\(.latency.p99_us|floor)"' "$r") us" \
        || fail "$name: no latency samples"
}
run_load audio audio smoke-audio
run_load ils ils smoke-ils
jq -e '.totals.rx_video_by_layer[1] > 0 and .totals.rx_video_by_layer[0] == 0 and .totals.rx_video_by_layer[2] == 0' \
    "$OUT/ils/result.json" >/dev/null && pass "ils: middle layer (h) only by default" \
    || fail "ils: layers q/h/f = $(jq -c .totals.rx_video_by_layer "$OUT/ils/result.json")"
# The tool puts the room name into /whep/{room}, so a query string selects the layer.
run_load ils-layer0 ils 'smoke-l0?layer=0'
jq -e '.totals.rx_video_by_layer[0] > 0 and .totals.rx_video_by_layer[1] == 0 and .totals.rx_video_by_layer[2] == 0' \
    "$OUT/ils-layer0/result.json" >/dev/null && pass "?layer=0: lowest layer (q) only" \
    || fail "?layer=0: layers q/h/f = $(jq -c .totals.rx_video_by_layer "$OUT/ils-layer0/result.json")"

# Every resource was DELETEd by the tool: nothing left on the server.
jq -e '.rooms == 0 and .transports == 0' <(curl -s "$URL/health") >/dev/null \
    && pass "all resources deleted" || fail "left over: $(curl -s "$URL/health")"

# A second publisher in a room is refused with 409 (the first is kept with --no-delete).
"$LOAD" --target whip-whep "$URL" --scenario audio --room smoke-409 --viewers 1 --duration 1 \
    --quiet --no-delete --out "$OUT/409a" >"$OUT/409a.log" 2>&1 || true
if ! "$LOAD" --target whip-whep "$URL" --scenario audio --room smoke-409 --viewers 1 --duration 1 \
    --quiet --out "$OUT/409b" >"$OUT/409b.log" 2>&1 && grep -q "HTTP 409" "$OUT/409b.log"; then
    pass "second publisher in a room -> 409"
else
    fail "second publisher in a room was not refused with 409 (log $OUT/409b.log)"
fi

if [ "$FAILS" -eq 0 ]; then echo "smoke: all checks passed (outputs in $OUT)"; else echo "smoke: $FAILS check(s) failed (outputs in $OUT)"; exit 1; fi
