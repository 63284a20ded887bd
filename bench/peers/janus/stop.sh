#!/usr/bin/env bash
# Stop the Janus started by start.sh: bench/peers/janus/stop.sh [--port 8088] [--dir DIR]
# The veth (v0/v1) is left in place (harmless, reused by the next start).
set -euo pipefail
PORT=8088
DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        *) echo "stop.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
DIR="${DIR:-/tmp/ils-janus-$PORT}"
if [ ! -f "$DIR/janus.pid" ]; then
    echo "stop.sh: no $DIR/janus.pid (not started by start.sh --port $PORT?)" >&2
    exit 0
fi
PID=$(cat "$DIR/janus.pid")
if kill -0 "$PID" 2>/dev/null; then
    kill "$PID"
    for _ in $(seq 1 50); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PID" 2>/dev/null; then kill -9 "$PID"; fi
    echo "stopped janus pid $PID"
else
    echo "janus pid $PID not running"
fi
rm -f "$DIR/janus.pid"
