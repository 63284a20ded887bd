#!/usr/bin/env bash
# Start the Medooze WHIP/WHEP peer: npm ci if needed (idempotent), build the loopback-bind
# preload, start `node server.js` pinned with `taskset -c CORE`, wait for /health, print
# `PID=... URL=http://127.0.0.1:PORT`. Stop it with stop.sh.
#
#   bench/peers/medooze/start.sh [--port 8090] [--core 0] [--control-core 1]
#
# --core N pins the whole process (all threads) to N. With --control-core M the process is
# pinned to M and only Medooze's media thread (all RTP/RTCP/DTLS work) to N, the way ils runs
# control and engine on separate cores.
#
# Build: the first run compiles Medooze's native code (~4 min on 2 cores); later runs reuse it.
set -euo pipefail
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PORT=8090
CORE=0
CONTROL_CORE=
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT=${2:?--port needs a value}; shift 2 ;;
        --core) CORE=${2:?--core needs a value}; shift 2 ;;
        --control-core) CONTROL_CORE=${2:?--control-core needs a value}; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "start.sh: unknown argument $1 (use --port N, --core N, --control-core N)" >&2; exit 2 ;;
    esac
done
RUN="$DIR/.run"
mkdir -p "$RUN"
PIDFILE="$RUN/server-$PORT.pid"
LOG="$RUN/server-$PORT.log"

if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "start.sh: already running (pid $(cat "$PIDFILE")); run stop.sh --port $PORT first" >&2
    exit 1
fi
if curl -fsS -m 1 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
    echo "start.sh: something else already answers on 127.0.0.1:$PORT" >&2
    exit 1
fi

cd "$DIR"
# npm ci only when the addon is missing or package-lock.json changed since the last npm ci
# (its sha256 is kept in node_modules/.ils-lock-sha256); the native addon builds offline
# against the local node headers (npm_config_nodedir).
LOCK_SHA=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f node_modules/medooze-media-server/build/Release/medooze-media-server.node ] \
    || [ "$(cat node_modules/.ils-lock-sha256 2>/dev/null)" != "$LOCK_SHA" ]; then
    export npm_config_nodedir=${npm_config_nodedir:-/usr}
    echo "start.sh: npm ci (builds Medooze's native code, ~4 min on 2 cores)" >&2
    t0=$(date +%s)
    npm ci --no-audit --no-fund >"$RUN/npm-ci.log" 2>&1 || { tail -30 "$RUN/npm-ci.log" >&2; exit 1; }
    echo "$LOCK_SHA" >node_modules/.ils-lock-sha256
    echo "start.sh: npm ci took $(( $(date +%s) - t0 )) s" >&2
fi
PRELOAD="$DIR/build/bind_loopback.so"
if [ ! -f "$PRELOAD" ] || [ preload/bind_loopback.c -nt "$PRELOAD" ]; then
    mkdir -p "$DIR/build"
    cc -O2 -Wall -shared -fPIC -o "$PRELOAD" preload/bind_loopback.c -ldl
fi

if [ -n "$CONTROL_CORE" ]; then
    PIN=$CONTROL_CORE
    export MEDOOZE_MEDIA_CORE=$CORE
else
    PIN=$CORE
    unset MEDOOZE_MEDIA_CORE
fi
ILS_BIND_IP=127.0.0.1 LD_PRELOAD="$PRELOAD" \
    setsid taskset -c "$PIN" node --expose-gc server.js --port "$PORT" >"$LOG" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$PIDFILE"
for _ in $(seq 1 100); do
    if curl -fsS -m 1 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
        echo "PID=$PID URL=http://127.0.0.1:$PORT"
        exit 0
    fi
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "start.sh: server exited; log $LOG:" >&2
        tail -20 "$LOG" >&2
        rm -f "$PIDFILE"
        exit 1
    fi
    sleep 0.1
done
echo "start.sh: no /health answer after 10 s; log $LOG (server pid $PID left running, stop.sh stops it)" >&2
exit 1
