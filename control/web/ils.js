// ils demo client: WHIP publish / WHEP watch against an ils-control server.
// Plain ES module, no build step, no dependencies. Used by the demo page (index.html) and by the
// real-browser tests (tests/browser/whip_whep.mjs calls these functions through page.evaluate).

/**
 * @typedef {Object} PublishOptions
 * @property {string} [base]            Server origin, e.g. "http://127.0.0.1:8080". Default: this page's origin.
 * @property {boolean} [simulcast]      Send 3 simulcast layers (rid q/h/f, scaleResolutionDownBy 4/2/1). Default true.
 * @property {boolean} [audio]          Send the microphone. Default true.
 * @property {boolean} [video]          Send the camera. Default true.
 * @property {MediaStream} [stream]     Use this stream instead of calling getUserMedia.
 * @property {HTMLVideoElement} [previewEl] Show the local camera here (muted).
 * @property {number} [iceWaitMs]       Longest wait for ICE gathering before sending the offer. Default 1000.
 */

/**
 * @typedef {Object} WatchOptions
 * @property {string} [base]            Server origin. Default: this page's origin.
 * @property {number} [iceWaitMs]       Longest wait for ICE gathering before sending the offer. Default 1000.
 */

/**
 * A publish or watch session.
 * @typedef {Object} Session
 * @property {"publish"|"watch"} kind
 * @property {string} room
 * @property {RTCPeerConnection} pc
 * @property {string} token             Bearer token used for POST and DELETE.
 * @property {string|null} location     Absolute URL of the WHIP/WHEP resource (from the Location header).
 * @property {string} offer             The SDP offer that was POSTed.
 * @property {string} answer            The SDP answer from the server.
 * @property {MediaStream|null} stream  Local stream (publish) or received stream (watch).
 * @property {boolean} stopped
 */

/**
 * Summary of getStats() for one session. Numbers are cumulative counters unless noted.
 * @typedef {Object} SessionStats
 * @property {"publish"|"watch"} kind
 * @property {RTCPeerConnectionState} connectionState
 * @property {RTCIceConnectionState} iceConnectionState
 * @property {{framesDecoded:number, framesReceived:number, framesDropped:number, packetsReceived:number,
 *   packetsLost:number, freezeCount:number, totalFreezesDuration:number, frameWidth:number, frameHeight:number,
 *   framesPerSecond:number, bytesReceived:number, jitter:number, nackCount:number, pliCount:number,
 *   codec:string}|null} video   Inbound video (watch sessions).
 * @property {{packetsReceived:number, packetsLost:number, bytesReceived:number, jitter:number,
 *   concealedSamples:number, totalSamplesReceived:number, codec:string}|null} audio   Inbound audio (watch sessions).
 * @property {Array<{rid:string, kind:string, packetsSent:number, bytesSent:number, framesEncoded:number,
 *   frameWidth:number, frameHeight:number, framesPerSecond:number, qualityLimitationReason:string,
 *   nackCount:number, pliCount:number, codec:string, active:boolean}>} outbound   Outbound streams (publish sessions), one per layer.
 * @property {{localAddress:string, remoteAddress:string, currentRoundTripTime:number}|null} candidatePair  Selected pair.
 */

/** An error from the server (its one-line body as message) or from this client. */
export class IlsError extends Error {
  /**
   * @param {string} message
   * @param {number} [status] HTTP status, 0 for client-side errors.
   */
  constructor(message, status = 0) {
    super(message);
    this.name = "IlsError";
    this.status = status;
  }
}

/** Simulcast layers we send: rid, downscale factor (lowest first, as RFC 8853 lists them). */
export const SIMULCAST_LAYERS = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_500_000 },
];

/** @param {string|undefined} base */
function origin(base) {
  if (base) return base.replace(/\/+$/, "");
  return globalThis.location ? globalThis.location.origin : "";
}

/**
 * Reads a server error: the body is one line of text (at most 300 characters are shown).
 * @param {Response} res
 */
async function serverError(res) {
  let text = "";
  try {
    text = (await res.text()).trim().split("\n")[0].slice(0, 300);
  } catch (_) {
    /* body unreadable: status alone */
  }
  return new IlsError(`${res.status} ${res.statusText || ""}: ${text || "(no reason given)"}`.replace("  ", " "), res.status);
}

/**
 * Fetches a demo token from a server started with `--dev` (GET /api/dev/token?room=R&role=ROLE).
 * @param {string} room
 * @param {"host"|"producer"|"viewer"} role
 * @param {string} [base]
 * @returns {Promise<string>}
 */
export async function devToken(room, role, base) {
  const url = `${origin(base)}/api/dev/token?room=${encodeURIComponent(room)}&role=${encodeURIComponent(role)}`;
  const res = await fetch(url);
  if (res.status === 404) {
    throw new IlsError("no dev mode: start ils-control with --dev or paste a token", 404);
  }
  if (!res.ok) throw await serverError(res);
  const body = await res.json();
  if (!body || typeof body.token !== "string") throw new IlsError("dev token response has no token field");
  return body.token;
}

/**
 * Resolves once ICE gathering is complete, or after `ms` milliseconds, whichever comes first.
 * (ils is ICE-lite and learns our address from our STUN checks, so candidates are a courtesy.)
 * @param {RTCPeerConnection} pc
 * @param {number} ms
 */
export function iceGathered(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/**
 * createOffer → wait for ICE → POST to the WHIP/WHEP endpoint → setRemoteDescription(answer).
 * @param {RTCPeerConnection} pc
 * @param {string} url
 * @param {string} token
 * @param {number} iceWaitMs
 * @returns {Promise<{offer:string, answer:string, location:string|null}>}
 */
async function negotiate(pc, url, token, iceWaitMs) {
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc, iceWaitMs);
  const offer = pc.localDescription ? pc.localDescription.sdp : "";
  const res = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
    body: offer,
  });
  if (res.status !== 201 && res.status !== 200) throw await serverError(res);
  const answer = await res.text();
  const loc = res.headers.get("Location");
  const location = loc ? new URL(loc, url).toString() : null;
  await pc.setRemoteDescription({ type: "answer", sdp: answer });
  return { offer, answer, location };
}

/**
 * @param {string} room
 * @param {string|null|undefined} token
 * @param {"host"|"viewer"} role
 * @param {string|undefined} base
 */
async function tokenFor(room, token, role, base) {
  if (!room) throw new IlsError("room name is empty");
  if (token && token.trim()) return token.trim();
  return devToken(room, role, base);
}

/** Camera constraints for publishing: 1280x720@30, so that Chromium allows all 3 simulcast layers. */
export const CAMERA = { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };

/**
 * Adds send-only transceivers to `pc` for the first video track of `stream` (with the
 * [`SIMULCAST_LAYERS`] unless `simulcast === false`) and its first audio track.
 * @param {RTCPeerConnection} pc
 * @param {MediaStream} stream
 * @param {boolean} [simulcast]
 * @returns {boolean} whether there was a track to send
 */
export function addSendTransceivers(pc, stream, simulcast) {
  const video = stream.getVideoTracks()[0];
  if (video) {
    pc.addTransceiver(video, {
      direction: "sendonly",
      streams: [stream],
      sendEncodings: simulcast === false ? [{}] : SIMULCAST_LAYERS.map((l) => ({ ...l })),
    });
  }
  const audio = stream.getAudioTracks()[0];
  if (audio) pc.addTransceiver(audio, { direction: "sendonly", streams: [stream] });
  return Boolean(video || audio);
}

/**
 * Publishes camera + microphone to `room` over WHIP (POST /whip/<room>).
 * An empty token asks the server for a dev token (role host).
 * @param {string} room
 * @param {string|null} [token]
 * @param {PublishOptions} [opts]
 * @returns {Promise<Session>}
 */
export async function publish(room, token, opts = {}) {
  const base = origin(opts.base);
  const bearer = await tokenFor(room, token, "host", opts.base);
  const wantVideo = opts.video !== false;
  const wantAudio = opts.audio !== false;
  const stream =
    opts.stream ||
    (await navigator.mediaDevices.getUserMedia({
      video: wantVideo ? CAMERA : false,
      audio: wantAudio,
    }));
  if (opts.previewEl) {
    opts.previewEl.muted = true;
    opts.previewEl.srcObject = stream;
    opts.previewEl.play().catch(() => {});
  }
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
  /** @type {Session} */
  const session = { kind: "publish", room, pc, token: bearer, location: null, offer: "", answer: "", stream, stopped: false };
  try {
    if (!addSendTransceivers(pc, stream, opts.simulcast)) {
      throw new IlsError("nothing to publish: no camera or microphone track");
    }
    const r = await negotiate(pc, `${base}/whip/${encodeURIComponent(room)}`, bearer, opts.iceWaitMs ?? 1000);
    Object.assign(session, r);
    return session;
  } catch (e) {
    pc.close();
    if (!opts.stream) stream.getTracks().forEach((t) => t.stop());
    throw e;
  }
}

/**
 * Watches `room` over WHEP (POST /whep/<room>, recvonly audio + video) and plays it in `videoEl`.
 * An empty token asks the server for a dev token (role viewer).
 * @param {string} room
 * @param {string|null} [token]
 * @param {HTMLVideoElement|null} [videoEl]
 * @param {WatchOptions} [opts]
 * @returns {Promise<Session>}
 */
export async function watch(room, token, videoEl, opts = {}) {
  const base = origin(opts.base);
  const bearer = await tokenFor(room, token, "viewer", opts.base);
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
  const stream = new MediaStream();
  /** @type {Session} */
  const session = { kind: "watch", room, pc, token: bearer, location: null, offer: "", answer: "", stream, stopped: false };
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addEventListener("track", (ev) => {
    // One stream for the element whatever msid the server uses (or none).
    if (!stream.getTracks().includes(ev.track)) stream.addTrack(ev.track);
  });
  if (videoEl) {
    videoEl.srcObject = stream;
    videoEl.autoplay = true;
    videoEl.playsInline = true;
  }
  try {
    const r = await negotiate(pc, `${base}/whep/${encodeURIComponent(room)}`, bearer, opts.iceWaitMs ?? 1000);
    Object.assign(session, r);
    if (videoEl) {
      videoEl.play().catch(() => {
        // Autoplay with sound refused: play muted (the user can unmute with the controls).
        videoEl.muted = true;
        videoEl.play().catch(() => {});
      });
    }
    return session;
  } catch (e) {
    pc.close();
    throw e;
  }
}

/**
 * Ends a session: DELETE on its Location resource (errors ignored: the server may be gone),
 * closes the peer connection and stops local tracks. Safe to call twice.
 * @param {Session} session
 * @returns {Promise<void>}
 */
export async function stop(session) {
  if (!session || session.stopped) return;
  session.stopped = true;
  if (session.location) {
    try {
      await fetch(session.location, { method: "DELETE", headers: { Authorization: `Bearer ${session.token}` } });
    } catch (_) {
      /* server unreachable: the engine expires the transport on consent timeout */
    }
  }
  session.pc.close();
  if (session.kind === "publish" && session.stream) session.stream.getTracks().forEach((t) => t.stop());
}

/** @param {any} v */
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);

/**
 * Summarises getStats() for a session (see SessionStats).
 * @param {Session} session
 * @returns {Promise<SessionStats>}
 */
export async function stats(session) {
  const pc = session.pc;
  const report = await pc.getStats();
  /** @type {Map<string, any>} */
  const byId = new Map();
  report.forEach((s) => byId.set(s.id, s));
  const codecOf = (/** @type {any} */ s) => {
    const c = s.codecId ? byId.get(s.codecId) : null;
    return c ? c.mimeType : "";
  };
  /** @type {SessionStats} */
  const out = {
    kind: session.kind,
    connectionState: pc.connectionState,
    iceConnectionState: pc.iceConnectionState,
    video: null,
    audio: null,
    outbound: [],
    candidatePair: null,
  };
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      const v = out.video || {
        framesDecoded: 0, framesReceived: 0, framesDropped: 0, packetsReceived: 0, packetsLost: 0,
        freezeCount: 0, totalFreezesDuration: 0, frameWidth: 0, frameHeight: 0, framesPerSecond: 0,
        bytesReceived: 0, jitter: 0, nackCount: 0, pliCount: 0, codec: "",
      };
      v.framesDecoded += num(s.framesDecoded);
      v.framesReceived += num(s.framesReceived);
      v.framesDropped += num(s.framesDropped);
      v.packetsReceived += num(s.packetsReceived);
      v.packetsLost += num(s.packetsLost);
      v.freezeCount += num(s.freezeCount);
      v.totalFreezesDuration += num(s.totalFreezesDuration);
      v.frameWidth = Math.max(v.frameWidth, num(s.frameWidth));
      v.frameHeight = Math.max(v.frameHeight, num(s.frameHeight));
      v.framesPerSecond += num(s.framesPerSecond);
      v.bytesReceived += num(s.bytesReceived);
      v.jitter = Math.max(v.jitter, num(s.jitter));
      v.nackCount += num(s.nackCount);
      v.pliCount += num(s.pliCount);
      v.codec = v.codec || codecOf(s);
      out.video = v;
    } else if (s.type === "inbound-rtp" && s.kind === "audio") {
      const a = out.audio || {
        packetsReceived: 0, packetsLost: 0, bytesReceived: 0, jitter: 0, concealedSamples: 0,
        totalSamplesReceived: 0, codec: "",
      };
      a.packetsReceived += num(s.packetsReceived);
      a.packetsLost += num(s.packetsLost);
      a.bytesReceived += num(s.bytesReceived);
      a.jitter = Math.max(a.jitter, num(s.jitter));
      a.concealedSamples += num(s.concealedSamples);
      a.totalSamplesReceived += num(s.totalSamplesReceived);
      a.codec = a.codec || codecOf(s);
      out.audio = a;
    } else if (s.type === "outbound-rtp") {
      out.outbound.push({
        rid: s.rid || "",
        kind: s.kind,
        packetsSent: num(s.packetsSent),
        bytesSent: num(s.bytesSent),
        framesEncoded: num(s.framesEncoded),
        frameWidth: num(s.frameWidth),
        frameHeight: num(s.frameHeight),
        framesPerSecond: num(s.framesPerSecond),
        qualityLimitationReason: s.qualityLimitationReason || "",
        nackCount: num(s.nackCount),
        pliCount: num(s.pliCount),
        codec: codecOf(s),
        active: s.active !== false,
      });
    } else if (s.type === "transport" && s.selectedCandidatePairId) {
      const p = byId.get(s.selectedCandidatePairId);
      if (p) {
        const l = byId.get(p.localCandidateId) || {};
        const r = byId.get(p.remoteCandidateId) || {};
        out.candidatePair = {
          localAddress: `${l.address || l.ip || "?"}:${l.port ?? "?"}`,
          remoteAddress: `${r.address || r.ip || "?"}:${r.port ?? "?"}`,
          currentRoundTripTime: num(p.currentRoundTripTime),
        };
      }
    }
  });
  out.outbound.sort((a, b) => (a.kind + a.rid).localeCompare(b.kind + b.rid));
  return out;
}
