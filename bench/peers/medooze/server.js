#!/usr/bin/env node
// A minimal WHIP/WHEP broadcast app over the Medooze media server (npm `medooze-media-server`),
// the Medooze peer for ils-load benchmarks (issue 4). One room = one WHIP publisher (Opus +
// VP8 simulcast by rid) and any number of WHEP viewers; each viewer gets its own outgoing
// stream attached to the publisher's tracks, video on one simulcast layer (middle by default,
// `?layer=0|1|2`). Everything is bound to loopback. See README.md.
"use strict";

const http = require("http");
const crypto = require("crypto");
const MediaServer = require("medooze-media-server");
const { SDPInfo } = require("semantic-sdp");
// Not re-exported by semantic-sdp's index (3.31.1).
const DirectionWay = require("semantic-sdp/lib/DirectionWay");

/** HTTP listen address. Default 127.0.0.1 (loopback only, like every server here). */
const HOST = process.env.MEDOOZE_HOST || "127.0.0.1";
/** HTTP port. Default 8090 (`--port`). */
const PORT = parseIntArg("--port", process.env.MEDOOZE_PORT || "8090");
/** Address announced in the ICE candidate (the UDP socket is bound there via preload/). */
const MEDIA_IP = process.env.MEDOOZE_MEDIA_IP || "127.0.0.1";
/** DTLS-SRTP profiles, server preference order (OpenSSL names, ':'-separated). Default
 *  AES-128-GCM first, then AES-CM-HMAC-SHA1-80: what ils picks when a client offers both (the
 *  load tool offers GCM first). Medooze's own default string uses ';' separators, which OpenSSL
 *  rejects, so without this it only ever negotiates AES_CM_128_HMAC_SHA1_80. */
const SRTP_PROFILES = process.env.MEDOOZE_SRTP_PROFILES || "SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80";
/** Override of Medooze's wait for a missing incoming packet before forwarding the ones behind
 *  it, ms. Default 0: forward at once, as ils does. Medooze's own default waits max(200 ms,
 *  3 x RTT) up to 750 ms (1 s before an RTT is known) for a retransmission; the load tool's
 *  publisher did not retransmit when this was measured (now it resends NACKed packets on their
 *  own SSRC; not re-measured here), so one lost incoming packet stalled the layer for up to 1 s.
 *  MEDOOZE_MAX_WAIT_MS=default keeps Medooze's behaviour. */
const MAX_WAIT_MS = parseMaxWait(process.env.MEDOOZE_MAX_WAIT_MS ?? "0");
/** Default video layer for viewers without `?layer=`: 1 = middle of q/h/f (what ils's `ils`
 *  scenario views); MEDOOZE_DEFAULT_LAYER=0|1|2 overrides it. */
const DEFAULT_LAYER = parseLayer(process.env.MEDOOZE_DEFAULT_LAYER ?? "1");
if (DEFAULT_LAYER === null) {
	console.error("MEDOOZE_DEFAULT_LAYER must be 0, 1 or 2");
	process.exit(2);
}

/** Largest SDP offer body accepted, bytes. Default 64 KiB (ils control's limit); bounds
 *  memory per request. A larger body is answered 413 and counted in `limits.bodyTooLarge`. */
const MAX_BODY_BYTES = 64 * 1024;
/** Most rooms at once. Default 1024; bounds the room map against random room names. Hit:
 *  503, counted in `limits.rooms`. */
const MAX_ROOMS = 1024;
/** Most transports (publishers + viewers) at once. Default 20 000; each costs Medooze one
 *  ICE/DTLS/SRTP transport (~100 KiB native), so worst case ~2 GiB. Hit: 503, counted in
 *  `limits.transports`. */
const MAX_TRANSPORTS = 20000;
/** Room names: 1..64 chars of [A-Za-z0-9_.-]. */
const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;

const URI_TWCC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
const URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
const URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid";
const URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const URI_RRID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
const URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

const VIDEO_FB = [
	{ id: "goog-remb" },
	{ id: "transport-cc" },
	{ id: "ccm", params: ["fir"] },
	{ id: "nack" },
	{ id: "nack", params: ["pli"] },
];

/** What a publisher may send: Opus, VP8 + RTX, rid simulcast. */
const PUBLISH_CAPS = {
	audio: {
		codecs: ["opus"],
		extensions: [URI_AUDIO_LEVEL, URI_ABS_SEND_TIME, URI_TWCC, URI_MID],
	},
	video: {
		codecs: ["vp8"],
		rtx: true,
		rtcpfbs: VIDEO_FB,
		extensions: [URI_ABS_SEND_TIME, URI_TWCC, URI_MID, URI_RID, URI_RRID],
		simulcast: true,
	},
};

/** What a viewer receives: Opus, VP8 + RTX, no simulcast (one layer per viewer). */
const VIEW_CAPS = {
	audio: {
		codecs: ["opus"],
		extensions: [URI_AUDIO_LEVEL, URI_ABS_SEND_TIME, URI_TWCC, URI_MID],
	},
	video: {
		codecs: ["vp8"],
		rtx: true,
		rtcpfbs: VIDEO_FB,
		extensions: [URI_ABS_SEND_TIME, URI_TWCC, URI_MID],
	},
};

/** "default" -> null (no override), "N" (0..5000) -> N; exits on anything else. */
function parseMaxWait(v) {
	if (v === "default") return null;
	const n = Number(v);
	if (!Number.isInteger(n) || n < 0 || n > 5000) {
		console.error(`MEDOOZE_MAX_WAIT_MS must be 0..5000 or "default", got ${JSON.stringify(v)}`);
		process.exit(2);
	}
	return n;
}

/** "0" | "1" | "2" -> number, anything else -> null. */
function parseLayer(v) {
	return ["0", "1", "2"].includes(String(v)) ? Number(v) : null;
}

function parseIntArg(flag, dflt) {
	const i = process.argv.indexOf(flag);
	const v = i >= 0 ? process.argv[i + 1] : dflt;
	const n = Number.parseInt(v, 10);
	if (!Number.isInteger(n) || n <= 0 || n > 65535) {
		console.error(`${flag} must be a port number 1..65535, got ${JSON.stringify(v)}`);
		process.exit(2);
	}
	return n;
}

/** Error with an HTTP status and a message that says what to do. */
class HttpError extends Error {
	constructor(status, message) {
		super(message);
		this.status = status;
	}
}

MediaServer.enableLog(!!process.env.MEDOOZE_LOG);
MediaServer.enableDebug(false);
MediaServer.enableUltraDebug(false);
MediaServer.enableWarning(!!process.env.MEDOOZE_WARN);

const endpoint = MediaServer.createEndpoint(MEDIA_IP);
endpoint.setDefaultSRTProtectionProfiles(SRTP_PROFILES);
endpoint.setThreadName("mz-media");
// start.sh --control-core M: the process runs on M (Node's JS thread: HTTP, SDP, events) and
// Medooze's media thread (the Endpoint's event loop: all RTP/RTCP/DTLS) moves to this core,
// like ils's control/engine split.
if (process.env.MEDOOZE_MEDIA_CORE !== undefined) {
	const core = Number(process.env.MEDOOZE_MEDIA_CORE);
	if (!Number.isInteger(core) || core < 0 || !endpoint.setAffinity(core)) {
		console.error(`could not pin Medooze's media thread to core ${process.env.MEDOOZE_MEDIA_CORE}`);
		process.exit(2);
	}
}

/**
 * @typedef {{ id: string, transport: any, stream: any, rids: string[] }} Publisher
 * @typedef {{ id: string, transport: any, stream: any, layer: number }} Viewer
 * @typedef {{ name: string, publisher: Publisher | null, viewers: Map<string, Viewer> }} Room
 */
/** @type {Map<string, Room>} */
const rooms = new Map();
let transports = 0;
const counters = {
	publishes: 0,
	views: 0,
	deletes: 0,
	rejected: 0,
	iceTimeouts: 0,
	dtlsFailed: 0,
	attachErrors: 0,
	limits: { bodyTooLarge: 0, rooms: 0, transports: 0 },
};

function getRoom(name, create) {
	let room = rooms.get(name);
	if (!room && create) {
		if (rooms.size >= MAX_ROOMS) {
			counters.limits.rooms++;
			throw new HttpError(503, `too many rooms (MAX_ROOMS=${MAX_ROOMS}); delete some first`);
		}
		room = { name, publisher: null, viewers: new Map() };
		rooms.set(name, room);
	}
	return room;
}

function dropRoomIfEmpty(room) {
	if (!room.publisher && room.viewers.size === 0) rooms.delete(room.name);
}

/** Attach one viewer's outgoing tracks to the room's publisher (if there is one). */
function attachViewer(room, viewer) {
	const pub = room.publisher;
	if (!pub) return;
	try {
		const inAudio = pub.stream.getAudioTracks()[0];
		const inVideo = pub.stream.getVideoTracks()[0];
		const outAudio = viewer.stream.getAudioTracks()[0];
		const outVideo = viewer.stream.getVideoTracks()[0];
		if (inAudio && outAudio) outAudio.attachTo(inAudio);
		if (inVideo && outVideo) {
			const transponder = outVideo.attachTo(inVideo);
			// Encodings are keyed by rid; the offer's simulcast list is lowest first (q;h;f).
			const rids = pub.rids.length ? pub.rids : inVideo.getEncodings().map((e) => e.id);
			// Without simulcast there is one encoding and nothing to select.
			if (rids.length > 1) transponder.selectEncoding(rids[Math.min(viewer.layer, rids.length - 1)]);
		}
	} catch (e) {
		counters.attachErrors++;
		console.error(`attach viewer ${viewer.id} in room ${room.name}: ${e.message}`);
	}
}

function detachViewer(viewer) {
	for (const t of viewer.stream.getTracks()) {
		try {
			t.detach();
		} catch (_) {
			/* already detached */
		}
	}
}

function stopTransport(transport) {
	try {
		transport.stop();
	} catch (_) {
		/* already stopped */
	}
	transports--;
}

function removePublisher(room, id) {
	const pub = room.publisher;
	if (!pub || (id && pub.id !== id)) return false;
	room.publisher = null;
	for (const v of room.viewers.values()) detachViewer(v);
	stopTransport(pub.transport);
	dropRoomIfEmpty(room);
	return true;
}

function removeViewer(room, id) {
	const v = room.viewers.get(id);
	if (!v) return false;
	room.viewers.delete(id);
	detachViewer(v);
	stopTransport(v.transport);
	dropRoomIfEmpty(room);
	return true;
}

/** Creates a transport for an offer; the answer gets a=setup:passive (the peer is the DTLS client). */
function newTransport(offer, onGone) {
	if (transports >= MAX_TRANSPORTS) {
		counters.limits.transports++;
		throw new HttpError(503, `too many transports (MAX_TRANSPORTS=${MAX_TRANSPORTS}); delete some first`);
	}
	const transport = endpoint.createTransport(offer);
	transports++;
	try {
		transport.setRemoteProperties(offer);
	} catch (e) {
		stopTransport(transport);
		throw new HttpError(400, `offer's media not usable by Medooze (${e.message})`);
	}
	transport.once("icetimeout", () => {
		counters.iceTimeouts++;
		onGone();
	});
	transport.on("dtlsstate", (state) => {
		if (state === "failed") {
			counters.dtlsFailed++;
			onGone();
		}
	});
	return transport;
}

function parseOffer(body) {
	let offer;
	try {
		offer = SDPInfo.process(body);
	} catch (e) {
		throw new HttpError(400, `SDP offer unparseable (${e.message}); send an application/sdp offer`);
	}
	if (!offer.getICE() || !offer.getDTLS()) {
		throw new HttpError(400, "SDP offer has no ICE ufrag/pwd or DTLS fingerprint");
	}
	return offer;
}

function answerFor(offer, transport, caps) {
	const answer = offer.answer({
		dtls: transport.getLocalDTLSInfo(),
		ice: transport.getLocalICEInfo(),
		candidates: endpoint.getLocalCandidates(),
		capabilities: caps,
	});
	for (const m of answer.getMedias()) {
		if (m.getCodecs().size === 0) {
			throw new HttpError(400, `offer's ${m.getType()} m-line has no codec this peer forwards (audio: Opus, video: VP8)`);
		}
	}
	return answer;
}

function publish(roomName, body) {
	const offer = parseOffer(body);
	const audio = offer.getMedia("audio");
	const video = offer.getMedia("video");
	if (!audio && !video) throw new HttpError(400, "offer has no audio or video m-line");
	const room = getRoom(roomName, true);
	if (room.publisher) {
		dropRoomIfEmpty(room);
		throw new HttpError(409, `room ${roomName} already has a publisher; DELETE it first`);
	}
	const id = crypto.randomUUID();
	let transport;
	try {
		transport = newTransport(offer, () => removePublisher(room, id));
		const answer = answerFor(offer, transport, PUBLISH_CAPS);
		transport.setLocalProperties(answer);
		const infos = [...offer.getStreams().values()];
		if (infos.length !== 1) {
			throw new HttpError(400, `offer must carry exactly one msid stream, got ${infos.length}`);
		}
		const stream = transport.createIncomingStream(infos[0]);
		if (MAX_WAIT_MS !== null) for (const t of stream.getTracks()) t.setMaxWaitTime(MAX_WAIT_MS);
		let rids = [];
		const sim = video && video.getSimulcast();
		if (sim) {
			// a=simulcast:send q;h;f -> ["q","h","f"] (the first alternative of each entry)
			rids = sim.getSimulcastStreams(DirectionWay.SEND).map((alts) => alts[0].getId());
		}
		room.publisher = { id, transport, stream, rids };
		for (const v of room.viewers.values()) attachViewer(room, v);
		counters.publishes++;
		return { location: `/whip/${roomName}/${id}`, sdp: answer.toString() };
	} catch (e) {
		if (transport && (!room.publisher || room.publisher.id !== id)) stopTransport(transport);
		dropRoomIfEmpty(room);
		throw e;
	}
}

function view(roomName, body, layer) {
	const offer = parseOffer(body);
	const audio = offer.getMedia("audio");
	const video = offer.getMedia("video");
	if (!audio && !video) throw new HttpError(400, "offer has no audio or video m-line");
	const room = getRoom(roomName, true);
	const id = crypto.randomUUID();
	let transport;
	try {
		transport = newTransport(offer, () => removeViewer(room, id));
		const answer = answerFor(offer, transport, VIEW_CAPS);
		const stream = transport.createOutgoingStream({
			audio: audio ? { mediaId: audio.getId() } : undefined,
			video: video ? { mediaId: video.getId() } : undefined,
		});
		answer.addStream(stream.getStreamInfo());
		transport.setLocalProperties(answer);
		const viewer = { id, transport, stream, layer };
		room.viewers.set(id, viewer);
		attachViewer(room, viewer);
		counters.views++;
		return { location: `/whep/${roomName}/${id}`, sdp: answer.toString() };
	} catch (e) {
		if (transport && !room.viewers.has(id)) stopTransport(transport);
		dropRoomIfEmpty(room);
		throw e;
	}
}

function readBody(req) {
	return new Promise((resolve, reject) => {
		const chunks = [];
		let len = 0;
		const onData = (c) => {
			len += c.length;
			if (len > MAX_BODY_BYTES) {
				counters.limits.bodyTooLarge++;
				// Stop buffering; the 413 is sent with Connection: close and the socket is
				// closed once it is written (see send()).
				req.off("data", onData);
				req.resume();
				reject(new HttpError(413, `body larger than MAX_BODY_BYTES=${MAX_BODY_BYTES}; send a smaller SDP offer`));
				return;
			}
			chunks.push(c);
		};
		req.on("data", onData);
		req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
		req.on("error", reject);
	});
}

const fs = require("fs");
const CLK_TCK = 100; // USER_HZ on Linux

/** CPU seconds (user + system) of Medooze's media thread ("mz-media") and of the whole
 *  process, from /proc; null where unreadable. Diff two /health reads to split the cost. */
function cpuSeconds() {
	const ticks = (path) => {
		try {
			const stat = fs.readFileSync(path, "utf8");
			const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
			return (Number(f[11]) + Number(f[12])) / CLK_TCK; // utime, stime (fields 14, 15)
		} catch (_) {
			return null;
		}
	};
	let media = null;
	try {
		for (const tid of fs.readdirSync("/proc/self/task")) {
			if (fs.readFileSync(`/proc/self/task/${tid}/comm`, "utf8").trim() === "mz-media") {
				media = { tid: Number(tid), cpuSeconds: ticks(`/proc/self/task/${tid}/stat`) };
				break;
			}
		}
	} catch (_) {
		/* no /proc */
	}
	return { process: ticks("/proc/self/stat"), mediaThread: media };
}

function stats() {
	let viewers = 0;
	for (const r of rooms.values()) viewers += r.viewers.size;
	return { rooms: rooms.size, viewers, transports, cpu: cpuSeconds(), counters };
}

async function handle(req, res) {
	const url = new URL(req.url, "http://localhost");
	const parts = url.pathname.split("/").filter((p) => p.length);
	const method = req.method;
	if (method === "GET" && url.pathname === "/health") {
		return send(res, 200, "application/json", JSON.stringify({ ok: true, ...stats() }));
	}
	if (parts.length < 2 || (parts[0] !== "whip" && parts[0] !== "whep")) {
		throw new HttpError(404, "not found: use POST /whip/:room, POST /whep/:room, DELETE the Location, GET /health");
	}
	const kind = parts[0];
	const roomName = parts[1];
	if (!ROOM_RE.test(roomName)) throw new HttpError(400, "room must be 1..64 chars of [A-Za-z0-9_.-]");
	if (method === "POST" && parts.length === 2) {
		const body = await readBody(req);
		let r;
		if (kind === "whip") {
			r = publish(roomName, body);
		} else {
			const l = url.searchParams.get("layer");
			const layer = l === null ? DEFAULT_LAYER : parseLayer(l);
			if (layer === null) throw new HttpError(400, "layer must be 0, 1 or 2");
			r = view(roomName, body, layer);
		}
		res.setHeader("Location", r.location);
		return send(res, 201, "application/sdp", r.sdp);
	}
	if (method === "DELETE" && parts.length === 3) {
		const room = getRoom(roomName, false);
		const ok = room && (kind === "whip" ? removePublisher(room, parts[2]) : removeViewer(room, parts[2]));
		if (!ok) throw new HttpError(404, "no such resource (already deleted or timed out)");
		counters.deletes++;
		return send(res, 200, "text/plain", "deleted\n");
	}
	if (method === "OPTIONS") return send(res, 204, "text/plain", "");
	throw new HttpError(405, `${method} not allowed on ${url.pathname}`);
}

function send(res, status, type, body) {
	const headers = { "Content-Type": type, "Content-Length": Buffer.byteLength(body) };
	if (status === 413) {
		headers.Connection = "close";
		res.on("finish", () => res.socket && res.socket.destroy());
	}
	res.writeHead(status, headers);
	res.end(body);
}

const server = http.createServer((req, res) => {
	handle(req, res).catch((e) => {
		const status = e instanceof HttpError ? e.status : 500;
		if (status === 500) console.error(`${req.method} ${req.url}: ${e.stack || e}`);
		counters.rejected++;
		if (!res.headersSent) send(res, status, "text/plain", `${e.message}\n`);
	});
});
server.keepAliveTimeout = 5000;
server.listen(PORT, HOST, () => {
	console.log(`medooze peer listening on http://${HOST}:${PORT}, media on ${MEDIA_IP}:${endpoint.getLocalPort()}`);
});

/** Period of forced full GCs, ms (only when node runs with --expose-gc, as start.sh does).
 *  Medooze's native objects (transports, packet histories: ~1.2 MB per viewer) are freed only
 *  when V8 collects their small JS wrappers, which it rarely does on its own because the JS heap
 *  stays small; without this the RSS grew by ~250 MB per 200-viewer session and stayed there.
 *  Default 5000; MEDOOZE_GC_MS=0 turns it off. */
const GC_MS = Number(process.env.MEDOOZE_GC_MS ?? "5000");
if (typeof global.gc === "function" && Number.isFinite(GC_MS) && GC_MS > 0) {
	setInterval(() => global.gc(), GC_MS).unref();
}

function shutdown() {
	server.close();
	for (const room of [...rooms.values()]) {
		for (const id of [...room.viewers.keys()]) removeViewer(room, id);
		removePublisher(room);
	}
	endpoint.stop();
	MediaServer.terminate();
	setTimeout(() => process.exit(0), 200).unref();
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
