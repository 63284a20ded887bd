#!/usr/bin/env python3
"""Mutation fuzz of the peer's offer handling: N mutated WHIP/WHEP offers (lines deleted,
characters replaced, lines shuffled, odd attributes inserted) against a running server.
Fails (exit 1) on any 5xx or connection error, or if transports are left over afterwards.
Every 201 is DELETEd. Usage: fuzz.py [URL] [N] (default http://127.0.0.1:8090, 400)."""
import collections
import json
import random
import sys
import urllib.error
import urllib.request

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8090"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 400
# A recv-only viewer offer shaped like ils-load's (tools/load/src/sdp.rs).
BASE = """v=0
o=- 123 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS abc
m=audio 5000 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 127.0.0.1
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:2222914159 1 udp 2122260223 127.0.0.1 5000 typ host generation 0 network-id 1 network-cost 50
a=ice-ufrag:abcdefgh
a=ice-pwd:0123456789abcdefghijklmn
a=ice-options:trickle
a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=recvonly
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
m=video 9 UDP/TLS/RTP/SAVPF 96 97
c=IN IP4 127.0.0.1
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:abcdefgh
a=ice-pwd:0123456789abcdefghijklmn
a=ice-options:trickle
a=fingerprint:sha-256 AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99
a=setup:actpass
a=mid:1
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=recvonly
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 transport-cc
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
""".replace("\n", "\r\n")
PUB = (BASE.replace("a=recvonly", "a=sendonly\r\na=msid:abc t1")
       + "a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=simulcast:send q;h;f\r\n")
ODD = ["a=simulcast:send x;y", "a=rid:zz send", "m=audio 0 RTP/AVP 0", "a=msid:", "a=ssrc:1 msid:a b",
       "a=ssrc-group:FID 1", "a=extmap:300 x", "a=fingerprint:sha-256", "a=setup:active", "a=group:BUNDLE"]


def mutate(rng, src):
    lines = src.split("\r\n")
    op = rng.randrange(4)
    if op == 0:
        for _ in range(rng.randint(1, 8)):
            if lines:
                del lines[rng.randrange(len(lines))]
    elif op == 1:
        for _ in range(rng.randint(1, 5)):
            j = rng.randrange(len(lines))
            line = lines[j]
            if line:
                k = rng.randrange(len(line))
                lines[j] = line[:k] + rng.choice(" :=/;0123456789abcxyz\x00\xff-") + line[k + 1:]
    elif op == 2:
        rng.shuffle(lines)
    else:
        lines.insert(rng.randrange(len(lines)), rng.choice(ODD))
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def main():
    rng = random.Random(7)
    codes = collections.Counter()
    bad = 0
    for i in range(N):
        body = mutate(rng, rng.choice([BASE, PUB]))
        path = rng.choice(["/whip/fz%d" % i, "/whep/fz"])
        try:
            r = urllib.request.urlopen(urllib.request.Request(URL + path, data=body, method="POST"), timeout=5)
            codes[r.status] += 1
            loc = r.headers.get("Location")
            urllib.request.urlopen(urllib.request.Request(URL + loc, method="DELETE"), timeout=5)
        except urllib.error.HTTPError as e:
            codes[e.code] += 1
            if e.code >= 500:
                bad += 1
                print("5xx:", e.code, e.read()[:200])
        except (urllib.error.URLError, OSError) as e:
            bad += 1
            print("request failed:", e)
    print("status counts:", dict(codes))
    health = json.load(urllib.request.urlopen(URL + "/health", timeout=5))
    if health["transports"] != 0:
        bad += 1
        print("transports left over:", health["transports"])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
