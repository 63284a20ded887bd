#!/usr/bin/env bash
# Start Janus 1.1.2 (Debian `janus`) as a peer SFU for ils-load: videoroom plugin + plain HTTP
# transport on 127.0.0.1, ICE on a veth holding 127.0.0.2 (libnice skips LOOPBACK interfaces),
# a fixed RTP port range, low logging, optionally pinned to one core.
#
#   bench/peers/janus/start.sh [--port 8088] [--core N] [--event-loops 1] [--rtp-ports 20000-40000]
#                              [--debug-level 2] [--dir /tmp/ils-janus-PORT]
#
# Prints `PID=<pid> URL=http://127.0.0.1:<port>/janus` on success. Idempotent: installs janus
# only when missing, creates the veth only when missing, refuses to start a second Janus on a
# port that already answers. Stop with bench/peers/janus/stop.sh [--port PORT].
set -euo pipefail

PORT=8088
CORE=""
EVENT_LOOPS=1
RTP_PORTS="20000-40000"
DEBUG_LEVEL=2
DIR=""
VETH=v0
VETH_PEER=v1
ICE_ADDR=127.0.0.2

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT="$2"; shift 2 ;;
        --core) CORE="$2"; shift 2 ;;
        --event-loops) EVENT_LOOPS="$2"; shift 2 ;;
        --rtp-ports) RTP_PORTS="$2"; shift 2 ;;
        --debug-level) DEBUG_LEVEL="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "start.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
DIR="${DIR:-/tmp/ils-janus-$PORT}"
URL="http://127.0.0.1:$PORT/janus"

if curl -fsS -m 2 "$URL/info" >/dev/null 2>&1; then
    echo "start.sh: something already answers at $URL/info; stop it first (bench/peers/janus/stop.sh --port $PORT)" >&2
    exit 1
fi

# 1. Janus from Debian (idempotent).
if ! command -v janus >/dev/null 2>&1; then
    echo "start.sh: installing Debian janus" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y janus >&2 \
        || { echo "start.sh: apt-get install janus failed (run apt-get update?)" >&2; exit 1; }
fi
LIBDIR=$(dirname "$(dpkg -L janus | grep -m1 '/janus/plugins/libjanus_videoroom.so$')")/..
LIBDIR=$(cd "$LIBDIR" && pwd)

# 2. The veth recipe: libnice gathers no candidates on LOOPBACK-flagged interfaces, so give it
#    one interface that holds only a loopback-range address (traffic still stays local).
if ! ip link show "$VETH" >/dev/null 2>&1; then
    ip link add "$VETH" type veth peer name "$VETH_PEER"
fi
if ! ip -4 addr show dev "$VETH" | grep -q "inet $ICE_ADDR/"; then
    ip addr add "$ICE_ADDR/32" dev "$VETH"
fi
ip link set "$VETH" up
ip link set "$VETH_PEER" up

# 3. Private config: a copy of /etc/janus with our own janus.jcfg, HTTP transport and
#    videoroom config; private plugin/transport folders that hold only what we load.
rm -rf "$DIR"
mkdir -p "$DIR/plugins" "$DIR/transports" "$DIR/none"
cp -r /etc/janus "$DIR/conf"
ln -s "$LIBDIR/plugins/libjanus_videoroom.so" "$DIR/plugins/"
ln -s "$LIBDIR/transports/libjanus_http.so" "$DIR/transports/"

cat > "$DIR/conf/janus.jcfg" <<JCFG
# Written by bench/peers/janus/start.sh
general: {
	configs_folder = "$DIR/conf"
	plugins_folder = "$DIR/plugins"
	transports_folder = "$DIR/transports"
	events_folder = "$DIR/none"
	loggers_folder = "$DIR/none"
	debug_level = $DEBUG_LEVEL
	debug_timestamps = true
	debug_colors = false
	session_timeout = 60
	# A fixed pool of event loops instead of one thread per handle (thousands of viewers
	# would mean thousands of threads); 1 matches a one-core budget.
	event_loops = $EVENT_LOOPS
	server_name = "ils-bench-janus"
	# The address libnice gathers on (the veth below) is also the one put in SDP.
	interface = "$ICE_ADDR"
}
certificates: {
}
media: {
	rtp_port_range = "$RTP_PORTS"
	no_media_timer = 5
	min_nack_queue = 500
}
nat: {
	nice_debug = false
	full_trickle = false
	ice_enforce_list = "$VETH"
	ice_ignore_list = ""
}
plugins: {
}
transports: {
}
loggers: {
}
events: {
	broadcast = false
}
JCFG

cat > "$DIR/conf/janus.transport.http.jcfg" <<JCFG
# Written by bench/peers/janus/start.sh
general: {
	json = "plain"
	base_path = "/janus"
	http = true
	port = $PORT
	ip = "127.0.0.1"
	https = false
}
admin: {
	admin_http = false
	admin_https = false
}
cors: {
}
JCFG

cat > "$DIR/conf/janus.plugin.videoroom.jcfg" <<JCFG
# Written by bench/peers/janus/start.sh: no static rooms; ils-load creates its own.
general: {
}
JCFG

# 4. Start, pinned when asked.
PIN=()
if [ -n "$CORE" ]; then PIN=(taskset -c "$CORE"); fi
nohup "${PIN[@]}" janus -C "$DIR/conf/janus.jcfg" -F "$DIR/conf" -L "$DIR/janus.log" -N \
    >"$DIR/stdout.log" 2>&1 &
PID=$!
echo "$PID" > "$DIR/janus.pid"

for _ in $(seq 1 100); do
    if curl -fsS -m 1 "$URL/info" >/dev/null 2>&1; then
        echo "PID=$PID URL=$URL"
        exit 0
    fi
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "start.sh: janus exited; see $DIR/janus.log and $DIR/stdout.log" >&2
        tail -20 "$DIR/janus.log" "$DIR/stdout.log" >&2 || true
        exit 1
    fi
    sleep 0.2
done
echo "start.sh: janus (pid $PID) did not answer $URL/info in 20 s; see $DIR/janus.log" >&2
kill "$PID" 2>/dev/null || true
exit 1
