#!/usr/bin/env bash
# Stop the Medooze peer started by start.sh (SIGTERM, then SIGKILL after 5 s).
#   bench/peers/medooze/stop.sh [--port 8090]
set -euo pipefail
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PORT=8090
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT=${2:?--port needs a value}; shift 2 ;;
        *) echo "stop.sh: unknown argument $1 (use --port N)" >&2; exit 2 ;;
    esac
done
PIDFILE="$DIR/.run/server-$PORT.pid"
if [ ! -f "$PIDFILE" ]; then
    echo "stop.sh: not running (no $PIDFILE)"
    exit 0
fi
PID=$(cat "$PIDFILE")
if kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID"
    for _ in $(seq 1 50); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PID" 2>/dev/null; then
        echo "stop.sh: pid $PID ignored SIGTERM; SIGKILL" >&2
        kill -KILL "$PID"
    fi
fi
rm -f "$PIDFILE"
echo "stopped PID=$PID"
