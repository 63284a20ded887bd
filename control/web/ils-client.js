// ils session client: wraps the /ws session protocol (docs/protocol.md, version 1) for the ILS web
// app (studio.html, producer.html, viewer.html) and the real-browser scenario test
// (tests/browser/ils_session.mjs). Plain ES module, no build step, no dependencies beyond ./ils.js.
//
// One WebSocket per participant carries requests (each with a `rid`, echoed on the reply or on an
// `error`) and session events. Media uses at most two RTCPeerConnections per participant:
//   - publish: send-only camera + mic, 3-layer VP8 simulcast (rid q/h/f) like ils.js does for WHIP;
//   - subscribe: receive-only with a FIXED set of slots (m-lines). The server maps stage tracks into
//     slots and announces the mapping with `slots` events; the client never renegotiates after the
//     first offer/answer (`Subscription.negotiations` counts every offer/answer ever made on it).

import { CAMERA, addSendTransceivers, devToken, iceGathered } from "./ils.js";

export { devToken };

/** Protocol version this client speaks (`hello.v`). */
export const PROTOCOL_VERSION = 1;
/** Longest wait for a reply to a request (`rid`) before its promise rejects with code "timeout". */
export const REQUEST_TIMEOUT_MS = 10_000;
/** Longest wait for ICE gathering before an offer is sent (the server is ICE-lite). */
export const ICE_WAIT_MS = 1_000;
/** Most chat messages kept in `IlsClient.chat` (older ones are dropped from the client's copy). */
export const MAX_CHAT_KEPT = 200;
/**
 * Codecs a subscriber connection offers, by default: what the app's publishers send (VP8
 * simulcast, Opus) plus RTX. Chromium offers ~20 video codec entries per m-line otherwise
 * (~5 KiB per video slot), which puts a 25-slot offer far over the server's SDP size limit.
 */
export const SUBSCRIBE_CODECS = ["video/VP8", "audio/opus"];
/** Slot sizes the server understands (it picks the simulcast layer from them). */
export const SLOT_SIZES = /** @type {const} */ (["thumbnail", "medium", "full"]);

/**
 * @typedef {"host"|"producer"|"viewer"} Role
 * @typedef {"audience"|"green_room"|"stage"|"backstage"} Place
 * @typedef {"thumbnail"|"medium"|"full"} SlotSize
 */

/**
 * A participant as the server lists it (stage, green room and producers only; never audience members).
 * @typedef {Object} Participant
 * @property {string} id
 * @property {string} name
 * @property {Role} role
 * @property {Place} place
 * @property {{audio:boolean, video:boolean}} muted
 * @property {boolean} publishing
 */

/**
 * @typedef {Object} ChatMessage
 * @property {string|number} id
 * @property {{id:string, name:string, role:Role}} from
 * @property {string} text
 * @property {number} ts
 */

/**
 * @typedef {Object} Poll
 * @property {string|number} id
 * @property {string} question
 * @property {string[]} options
 * @property {number[]} counts
 * @property {boolean} closed
 */

/**
 * One slot of a subscription as the server maps it.
 * @typedef {Object} SlotMapping
 * @property {number} slot
 * @property {string|null} participant
 * @property {"audio"|"video"} kind
 * @property {string} [layer]
 */

/**
 * Per-slot receive statistics (from getStats(), matched by mid).
 * @typedef {Object} SlotStats
 * @property {number} slot
 * @property {"audio"|"video"} kind
 * @property {string} mid
 * @property {string|null} participant
 * @property {number} framesDecoded
 * @property {number} packetsReceived
 * @property {number} packetsLost
 * @property {number} bytesReceived
 * @property {number} frameWidth
 * @property {number} frameHeight
 */

/** How long a dropped client keeps trying to reconnect (longer than the server's default
 * resume grace, 20 s: past it, it rejoins as a new participant and renegotiates). */
export const RECONNECT_WINDOW_MS = 30_000;
/** First reconnect delay; doubles per attempt up to RECONNECT_MAX_DELAY_MS. */
export const RECONNECT_FIRST_DELAY_MS = 250;
export const RECONNECT_MAX_DELAY_MS = 4_000;

/**
 * Opens a WebSocket (with `opts.socket` when given) and resolves once it is open.
 * @param {string} target
 * @param {ConnectOptions} opts
 * @returns {Promise<WebSocket>}
 */
function openSocket(target, opts) {
  const ws = opts.socket ? opts.socket(target) : new WebSocket(target);
  return new Promise((resolve, reject) => {
    const fail = () => reject(new IlsSessionError("closed", `cannot open ${target} (is the server up, does it serve /ws?)`));
    ws.addEventListener("open", () => { ws.removeEventListener("error", fail); resolve(ws); }, { once: true });
    ws.addEventListener("error", fail, { once: true });
  });
}

/**
 * @typedef {Object} ConnectOptions
 * @property {string} [name]             Display name sent in `hello`.
 * @property {(url:string)=>WebSocket} [socket]  WebSocket factory (tests).
 */

/** An error reply from the server (`error {code, reason}`) or a client-side failure. */
export class IlsSessionError extends Error {
  /**
   * @param {string} code    Typed code: bad_message, not_allowed, rate_limited, too_large, not_found,
   *                         conflict, session_full, lagged, ... or a client one: timeout, closed, media.
   * @param {string} reason  Human-readable reason from the server.
   * @param {string} [rid]
   */
  constructor(code, reason, rid) {
    super(`${code}: ${reason}`);
    this.name = "IlsSessionError";
    this.code = code;
    this.reason = reason;
    this.rid = rid;
  }
}

/**
 * Turns "http://host:port", "ws://host:port/ws", "" (this page) into the WebSocket URL of /ws.
 * @param {string} [url]
 */
export function wsUrl(url) {
  const base = url || (globalThis.location ? globalThis.location.origin : "");
  const u = new URL(base, globalThis.location ? globalThis.location.href : undefined);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/ws";
  return u.toString();
}

/**
 * Participant ids are JSON numbers on the wire; pages keep them as strings (map keys, data-*).
 * @param {string|number} id
 */
export const pid = (id) => (typeof id === "string" && /^\d+$/.test(id) ? Number(id) : id);

/**
 * Key of a slot in `Subscription.slots`: slot numbers count per kind.
 * @param {string} kind
 * @param {number} slot
 */
export const slotKey = (kind, slot) => `${kind}:${slot}`;

/**
 * Restricts a transceiver to `mimeTypes` (+ RTX) when the browser supports codec preferences.
 * @param {RTCRtpTransceiver} t
 * @param {"audio"|"video"} kind
 * @param {string[]} mimeTypes  e.g. ["video/VP8"]; entries of the other kind are ignored
 */
function preferCodecs(t, kind, mimeTypes) {
  const want = mimeTypes.map((m) => m.toLowerCase()).filter((m) => m.startsWith(kind + "/"));
  if (!want.length || typeof t.setCodecPreferences !== "function" || !globalThis.RTCRtpReceiver || !RTCRtpReceiver.getCapabilities) return;
  const caps = RTCRtpReceiver.getCapabilities(kind);
  if (!caps) return;
  const keep = caps.codecs.filter((c) => want.includes(c.mimeType.toLowerCase()));
  if (!keep.length) return; // the browser has none of them: leave its defaults
  const rtx = caps.codecs.filter((c) => c.mimeType.toLowerCase() === `${kind}/rtx`);
  try {
    t.setCodecPreferences([...keep, ...rtx]);
  } catch (_) {
    /* refused: keep the browser's defaults (a larger offer) */
  }
}

/** @param {any} v */
const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : 0);

/**
 * The send-only publishing connection (camera + mic).
 */
export class Publication {
  /**
   * @param {RTCPeerConnection} pc
   * @param {MediaStream} stream
   */
  constructor(pc, stream) {
    this.pc = pc;
    this.stream = stream;
    /** The options it was published with (a server-initiated renegotiation publishes again with them). @type {{simulcast?:boolean}} */
    this.opts = {};
    /** Offers created / answers applied on this connection (1/1 after publish). */
    this.negotiations = { offers: 0, answers: 0 };
    this.offer = "";
    this.answer = "";
    this.closed = false;
  }
  /** Outbound video layers: [{rid, packetsSent, frameWidth, frameHeight}]. */
  async layers() {
    const out = [];
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") {
        out.push({ rid: s.rid || "", packetsSent: num(s.packetsSent), frameWidth: num(s.frameWidth), frameHeight: num(s.frameHeight) });
      }
    });
    return out.sort((a, b) => a.rid.localeCompare(b.rid));
  }
  /** Closes the connection and stops the local tracks (when they were opened by publish()). */
  close(stopTracks = true) {
    if (this.closed) return;
    this.closed = true;
    this.pc.close();
    if (stopTracks) this.stream.getTracks().forEach((t) => t.stop());
  }
}

/**
 * The receive-only connection with a fixed set of slots. Never renegotiated after subscribe():
 * the server re-maps slots and says so with `slots` events.
 */
export class Subscription {
  /** @param {RTCPeerConnection} pc */
  constructor(pc) {
    this.pc = pc;
    /** Offers created / answers applied on this connection: exactly 1/1 for its whole life. */
    this.negotiations = { offers: 0, answers: 0 };
    /** `negotiationneeded` events seen (the client never acts on them). */
    this.negotiationNeeded = 0;
    /** Slots by `slotKey(kind, slot)` ("video:0", "audio:0": numbers count per kind).
     * @type {Map<string, {slot:number, kind:"audio"|"video", mid:string, transceiver:RTCRtpTransceiver|null, participant:string|null, layer:string, size:SlotSize|null}>} */
    this.slots = new Map();
    /** MediaStream per participant, built from the slots mapped to them. @type {Map<string, MediaStream>} */
    this.streams = new Map();
    /** Number of `slots` mappings applied. */
    this.mappings = 0;
    /** Latest mapping entry per slot key. @type {Map<string, SlotMapping>} */
    this.mapped = new Map();
    this.offer = "";
    this.answer = "";
    this.closed = false;
    /** The codecs it was offered with (a server-initiated renegotiation subscribes again with them). @type {string[]} */
    this.codecs = SUBSCRIBE_CODECS;
    pc.addEventListener("negotiationneeded", () => { this.negotiationNeeded += 1; });
  }

  /** Slots currently showing `participant` (video first). @param {string|number} participant */
  slotsOf(participant) {
    return [...this.slots.values()].filter((s) => s.participant === String(participant)).sort((a, b) => (a.kind === b.kind ? a.slot - b.slot : a.kind === "video" ? -1 : 1));
  }

  /**
   * Applies a `slots` mapping: rebuilds the per-participant MediaStreams (only for participants
   * whose set of tracks changed, so <video> elements keep playing).
   * @param {SlotMapping[]} mapping
   * @returns {Set<string>} participants whose stream changed (added, removed or re-built)
   */
  applyMapping(mapping) {
    this.mappings += 1;
    for (const m of mapping) {
      // Kept even for slots not known yet (a `slots` event can overtake the subscribe answer).
      this.mapped.set(slotKey(m.kind, m.slot), m);
      const s = this.slots.get(slotKey(m.kind, m.slot));
      if (!s) continue;
      s.participant = m.participant === null || m.participant === undefined ? null : String(m.participant);
      s.layer = m.layer || "";
    }
    /** @type {Map<string, MediaStreamTrack[]>} */
    const want = new Map();
    for (const s of this.slots.values()) {
      if (!s.participant || !s.transceiver) continue;
      const list = want.get(s.participant) || [];
      list.push(s.transceiver.receiver.track);
      want.set(s.participant, list);
    }
    const changed = new Set();
    for (const [p, tracks] of want) {
      const cur = this.streams.get(p);
      const same = cur && cur.getTracks().length === tracks.length && tracks.every((t) => cur.getTracks().includes(t));
      if (!same) {
        this.streams.set(p, new MediaStream(tracks));
        changed.add(p);
      }
    }
    for (const p of [...this.streams.keys()]) {
      if (!want.has(p)) {
        this.streams.delete(p);
        changed.add(p);
      }
    }
    return changed;
  }

  /** Per-slot receive statistics, matched to slots by mid. @returns {Promise<SlotStats[]>} */
  async slotStats() {
    /** @type {Map<string, any>} */
    const byMid = new Map();
    (await this.pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.mid !== undefined) byMid.set(String(s.mid), s);
    });
    return [...this.slots.values()].map((s) => {
      const r = byMid.get(s.mid) || {};
      return {
        slot: s.slot, kind: s.kind, mid: s.mid, participant: s.participant,
        framesDecoded: num(r.framesDecoded), packetsReceived: num(r.packetsReceived), packetsLost: num(r.packetsLost),
        bytesReceived: num(r.bytesReceived), frameWidth: num(r.frameWidth), frameHeight: num(r.frameHeight),
      };
    });
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.pc.close();
  }
}

/**
 * A participant's connection to an ils session. Create with `IlsClient.connect(url, token)`.
 *
 * Events (`on(type, fn)`; `fn(payload, message)`):
 * `welcome`, `participant` (P joined/updated), `participant_left` ({id}), `audience_count` (n),
 * `slots` ({subscription, changed:Set}), `chat` (msg), `chat_hidden` (msg_id), `reactions` ({window_ms, counts}),
 * `poll` (poll), `hand` ({participant, raised}), `invited` ({by}), `moved` ({participant, to}),
 * `muted` ({audio, video}), `removed` ({reason}), `ended` ({reason}), `layout` (layout), `app` ({from, data}),
 * `audience_page`, `renegotiate` ({pc, cause, reason}: the server lost a connection; the client makes
 * it again unless `autoRenegotiate` is false), `renegotiated` ({pc, cause, publication|subscription}),
 * `error` (IlsSessionError; also every unsolicited server error), `reconnecting` ({attempt, code,
 * reason}: the socket dropped, resuming), `reconnected` ({resumed, attempt}), `close` ({code,
 * reason}: for good — left, removed, ended, refused, or could not reconnect),
 * `message` (every server message, raw), `state` (after any change of the lists below).
 */
export class IlsClient {
  /**
   * Opens the WebSocket, sends `hello` and resolves after `welcome`.
   * @param {string} url      Server origin ("http://127.0.0.1:8080"), a ws(s) URL, or "" for this page.
   * @param {string} token    JWT (room, role, grants).
   * @param {ConnectOptions} [opts]
   * @returns {Promise<IlsClient>}
   */
  static async connect(url, token, opts = {}) {
    const target = wsUrl(url);
    const client = new IlsClient(await openSocket(target, opts));
    client.target = target;
    client.token = token;
    client.opts = opts;
    client.applyWelcome(await client.hello(false));
    return client;
  }

  /** @param {WebSocket} ws */
  constructor(ws) {
    /** @type {WebSocket} */
    this.ws = ws;
    /** Where and how it connected (for reconnecting). */
    this.target = "";
    this.token = "";
    /** @type {ConnectOptions} */
    this.opts = {};
    /** Reconnect (with `hello{resume:true}`) when the socket drops (default true). */
    this.autoReconnect = true;
    /** A reconnection is under way. */
    this.reconnecting = false;
    /** Reconnections that succeeded. */
    this.reconnects = 0;
    /** `removed` / `ended` arrived: the server closes for good. */
    this.final = false;
    this.nextRid = 1;
    /** @type {Map<string, {resolve:(m:any)=>void, reject:(e:any)=>void, timer:any, expect:string|null}>} */
    this.pending = new Map();
    /** @type {Map<string, Set<Function>>} */
    this.handlers = new Map();
    /** @type {{id:string, role:Role, name:string, place:Place, grants:any}|null} */
    this.you = null;
    /** Stage, green room and producers, by id. @type {Map<string, Participant>} */
    this.participants = new Map();
    this.audienceCount = 0;
    /** @type {ChatMessage[]} */
    this.chatLog = [];
    /** @type {Map<string, Poll>} */
    this.polls = new Map();
    /** Raised hands (producers see them): participant id → true. @type {Map<string, any>} */
    this.hands = new Map();
    /** @type {any} */
    this.layout = null;
    /** @type {any} */
    this.limits = null;
    /** @type {Publication|null} */
    this.publication = null;
    /** @type {Subscription|null} */
    this.subscription = null;
    /** Server messages received, by type (for tests and diagnostics). @type {Record<string, number>} */
    this.received = {};
    /** Answer the server's `renegotiate` by making that connection again (default true). */
    this.autoRenegotiate = true;
    /** `renegotiate` requests received. */
    this.renegotiations = 0;
    this.closed = false;
    this.attach(ws);
  }

  /**
   * Sends `hello` with the client's token and name on its current socket and resolves with the
   * `welcome`. @param {boolean} resume  ask to resume the identity's participant (after a drop)
   */
  hello(resume) {
    /** @type {any} */
    const msg = { type: "hello", v: PROTOCOL_VERSION, token: this.token };
    if (this.opts.name) msg.name = this.opts.name;
    if (resume) msg.resume = true;
    return this.request(msg, "welcome");
  }

  /** Listens to `ws` and makes it the client's socket. @param {WebSocket} ws */
  attach(ws) {
    this.ws = ws;
    ws.addEventListener("message", (ev) => { if (ws === this.ws) this.onMessage(ev.data); });
    ws.addEventListener("close", (ev) => { if (ws === this.ws) this.onClose(ev.code, ev.reason); });
  }

  // ---------------------------------------------------------------------------------------------
  // Plumbing

  /**
   * Subscribes to an event (see the class comment). Returns a function that unsubscribes.
   * @param {string} type
   * @param {(payload:any, msg:any)=>void} fn
   */
  on(type, fn) {
    const set = this.handlers.get(type) || new Set();
    set.add(fn);
    this.handlers.set(type, set);
    return () => set.delete(fn);
  }

  /** @param {string} type @param {Function} fn */
  off(type, fn) {
    const set = this.handlers.get(type);
    if (set) set.delete(fn);
  }

  /**
   * Resolves with the next event of `type` for which `pred` holds (or rejects after `ms`).
   * @param {string} type
   * @param {(payload:any, msg:any)=>boolean} [pred]
   * @param {number} [ms]
   */
  waitFor(type, pred = () => true, ms = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { off(); reject(new IlsSessionError("timeout", `no ${type} event within ${ms} ms`)); }, ms);
      const off = this.on(type, (p, m) => {
        if (!pred(p, m)) return;
        clearTimeout(timer);
        off();
        resolve(p);
      });
    });
  }

  /** @param {string} type @param {any} payload @param {any} msg */
  emit(type, payload, msg) {
    const set = this.handlers.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(payload, msg);
      } catch (e) {
        console.error(`ils-client: ${type} handler threw`, e);
      }
    }
  }

  /**
   * Sends one message without waiting for anything. Returns its rid.
   * @param {any} msg
   */
  send(msg) {
    if (this.closed || this.ws.readyState !== 1) throw new IlsSessionError("closed", "the session connection is closed");
    const rid = msg.rid || `r${this.nextRid++}`;
    this.ws.send(JSON.stringify({ ...msg, rid }));
    return rid;
  }

  /**
   * Sends a request and resolves with the reply that echoes its rid (rejects on an `error` with
   * that rid, on close, or after REQUEST_TIMEOUT_MS). With `expect` = null the request has no
   * success reply in the protocol: it resolves with null after `graceMs` unless an error came.
   * @param {any} msg
   * @param {string|null} [expect]  Type of the success reply (e.g. "answer"); any type when undefined.
   * @param {number} [graceMs]
   */
  request(msg, expect, graceMs = 0) {
    const rid = `r${this.nextRid++}`;
    return new Promise((resolve, reject) => {
      const ms = expect === null ? graceMs : REQUEST_TIMEOUT_MS;
      const timer = setTimeout(() => {
        this.pending.delete(rid);
        if (expect === null) resolve(null);
        else reject(new IlsSessionError("timeout", `no ${expect || "reply"} to ${msg.type} within ${ms} ms`, rid));
      }, ms);
      this.pending.set(rid, { resolve, reject, timer, expect: expect ?? null });
      try {
        this.send({ ...msg, rid });
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(rid);
        reject(e);
      }
    });
  }

  /**
   * An action without a payload reply: resolves on the server's `ack` (same rid), rejects with
   * the typed `error` (e.g. not_allowed, rate_limited) or after REQUEST_TIMEOUT_MS.
   * @param {any} msg
   */
  action(msg) {
    return this.request(msg, "ack");
  }

  /** @param {string} data */
  onMessage(data) {
    /** @type {any} */
    let msg;
    try {
      msg = JSON.parse(String(data));
    } catch (_) {
      this.emit("error", new IlsSessionError("bad_message", "server sent a frame that is not JSON"), null);
      return;
    }
    if (!msg || typeof msg.type !== "string") return;
    this.received[msg.type] = (this.received[msg.type] || 0) + 1;
    this.emit("message", msg, msg);
    let key = msg.rid !== undefined && msg.rid !== null ? String(msg.rid) : "";
    if (!this.pending.has(key)) {
      // A reply without (or with an unknown) rid: the oldest request waiting for this type takes it;
      // an error before `welcome` fails the hello.
      key = "";
      for (const [rid, q] of this.pending) {
        if (q.expect === msg.type || (msg.type === "error" && q.expect === "welcome" && msg.rid === undefined)) { key = rid; break; }
      }
    }
    const p = key ? this.pending.get(key) : undefined;
    if (p) {
      msg = { ...msg, rid: msg.type === "error" ? key : msg.rid };
      if (msg.type === "error") {
        clearTimeout(p.timer);
        this.pending.delete(key);
        p.reject(new IlsSessionError(msg.code || "error", msg.reason || "", msg.rid));
        return;
      }
      if (p.expect === null || p.expect === msg.type || p.expect === undefined) {
        clearTimeout(p.timer);
        this.pending.delete(key);
        p.resolve(msg);
        if (msg.type === "answer" || msg.type === "welcome" || msg.type === "ack" || msg.type === "audience_page") return;
      }
    }
    this.dispatch(msg);
  }

  /** Applies one server event to the local state and emits it. @param {any} m */
  dispatch(m) {
    switch (m.type) {
      case "welcome":
        this.applyWelcome(m);
        break;
      case "participant": {
        const p = m.participant || m.p || m;
        if (p && p.id !== undefined) {
          if (p.place === "audience") this.participants.delete(String(p.id));
          else this.participants.set(String(p.id), p);
          if (this.you && String(p.id) === String(this.you.id)) Object.assign(this.you, { place: p.place, role: p.role });
        }
        this.emit("participant", p, m);
        this.emit("state", this, m);
        break;
      }
      case "participant_left":
        this.participants.delete(String(m.id));
        this.hands.delete(String(m.id));
        this.emit("participant_left", m, m);
        this.emit("state", this, m);
        break;
      case "audience_count":
        this.audienceCount = num(m.count);
        this.emit("audience_count", this.audienceCount, m);
        this.emit("state", this, m);
        break;
      case "slots": {
        const sub = this.subscription;
        const changed = sub ? sub.applyMapping(m.mapping || []) : new Set();
        this.emit("slots", { subscription: sub, mapping: m.mapping || [], changed }, m);
        break;
      }
      case "chat":
        if (m.msg) {
          // The same message again (e.g. featured for hosts): replace it, keep its position.
          const at = this.chatLog.findIndex((c) => String(c.id) === String(m.msg.id));
          if (at >= 0) this.chatLog[at] = m.msg;
          else this.chatLog.push(m.msg);
          if (this.chatLog.length > MAX_CHAT_KEPT) this.chatLog.splice(0, this.chatLog.length - MAX_CHAT_KEPT);
        }
        this.emit("chat", m.msg, m);
        break;
      case "chat_hidden":
        this.chatLog = this.chatLog.filter((c) => String(c.id) !== String(m.msg_id));
        this.emit("chat_hidden", m.msg_id, m);
        break;
      case "reactions":
        this.emit("reactions", { window_ms: m.window_ms, counts: m.counts || {} }, m);
        break;
      case "poll":
        if (m.poll && m.poll.id !== undefined) this.polls.set(String(m.poll.id), m.poll);
        this.emit("poll", m.poll, m);
        break;
      case "hand":
        if (m.raised) this.hands.set(String(m.participant), m);
        else this.hands.delete(String(m.participant));
        this.emit("hand", { participant: m.participant, raised: !!m.raised, name: m.name }, m);
        this.emit("state", this, m);
        break;
      case "invited":
        this.emit("invited", { by: m.by }, m);
        break;
      case "moved":
        if (this.you && String(m.participant) === String(this.you.id)) this.you.place = m.to;
        {
          const p = this.participants.get(String(m.participant));
          if (p) {
            if (m.to === "audience") this.participants.delete(String(m.participant));
            else p.place = m.to;
          }
        }
        this.emit("moved", { participant: m.participant, to: m.to }, m);
        this.emit("state", this, m);
        break;
      case "muted":
        this.emit("muted", { audio: m.audio, video: m.video }, m);
        break;
      case "removed":
        this.final = true;
        this.emit("removed", { reason: m.reason }, m);
        break;
      case "ended":
        this.final = true;
        this.emit("ended", { reason: m.reason }, m);
        break;
      case "layout":
        this.layout = m.layout;
        this.emit("layout", m.layout, m);
        break;
      case "app":
        this.emit("app", { from: m.from, data: m.data }, m);
        break;
      case "renegotiate":
        this.renegotiations += 1;
        this.emit("renegotiate", { pc: m.pc, cause: m.cause, reason: m.reason }, m);
        if (this.autoRenegotiate) {
          this.renegotiate(m.pc, m.cause).catch((e) => this.emit("error", e instanceof IlsSessionError ? e
            : new IlsSessionError("media", `renegotiation (${m.pc}, ${m.cause}) failed: ${e && e.message ? e.message : e}`), m));
        }
        break;
      case "audience_page":
        this.emit("audience_page", { items: m.items || [], next_cursor: m.next_cursor }, m);
        break;
      case "error":
        this.emit("error", new IlsSessionError(m.code || "error", m.reason || "", m.rid), m);
        break;
      default:
        this.emit(m.type, m, m);
    }
  }

  /** @param {any} w */
  applyWelcome(w) {
    this.you = w.you || null;
    const st = w.state || {};
    this.participants.clear();
    for (const list of [st.stage, st.green_room, st.producers]) {
      for (const p of list || []) this.participants.set(String(p.id), p);
    }
    this.audienceCount = num(st.audience_count);
    this.chatLog = [...(st.chat || [])];
    this.polls.clear();
    for (const p of st.polls || []) this.polls.set(String(p.id), p);
    this.hands.clear();
    for (const h of st.hands || []) {
      const id = typeof h === "object" && h !== null ? h.participant ?? h.id : h;
      this.hands.set(String(id), h);
    }
    this.layout = st.layout ?? null;
    this.limits = st.limits ?? null;
    this.emit("welcome", w, w);
    this.emit("state", this, w);
  }

  /** @param {number} code @param {string} reason */
  onClose(code, reason) {
    for (const [rid, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new IlsSessionError("closed", `connection closed (${code}${reason ? ": " + reason : ""})`, rid));
    }
    this.pending.clear();
    if (this.reconnecting) return; // a failed attempt: the reconnect loop tries again
    // The server's own ends (1000 removed/ended/replaced, 1001 idle, 1008 policy, 1003/1007/1009
    // bad input) and our close() are final; a drop (1006), a restart (1012), "try again" (1013)
    // or any other code resumes.
    const resumable = !this.closed && !this.final && this.autoReconnect && this.token !== "" &&
      ![1000, 1001, 1003, 1007, 1008, 1009, 1010].includes(code);
    if (resumable) {
      this.reconnect(code, reason);
      return;
    }
    this.closed = true;
    this.emit("close", { code, reason }, null);
  }

  /**
   * After a drop: reconnects with backoff (RECONNECT_FIRST_DELAY_MS doubling up to
   * RECONNECT_MAX_DELAY_MS) for RECONNECT_WINDOW_MS, sending `hello{resume:true}`. Resumed: the
   * participant and its PeerConnections are as they were (`reconnected` {resumed:true}). Not
   * resumed (the server's grace ended, or it restarted): a new participant, so the client makes
   * its connections again (`renegotiate`) and emits `reconnected` {resumed:false}. Gives up
   * with `close`.
   * @param {number} code @param {string} reason
   */
  async reconnect(code, reason) {
    this.reconnecting = true;
    const until = Date.now() + RECONNECT_WINDOW_MS;
    let delay = RECONNECT_FIRST_DELAY_MS;
    for (let attempt = 1; !this.closed && Date.now() < until; attempt++) {
      this.emit("reconnecting", { attempt, code, reason }, null);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, RECONNECT_MAX_DELAY_MS);
      try {
        this.attach(await openSocket(this.target, this.opts));
        const w = await this.hello(true);
        this.reconnecting = false;
        this.reconnects += 1;
        this.applyWelcome(w);
        this.emit("reconnected", { resumed: !!w.resumed, attempt }, w);
        if (!w.resumed) this.remakeConnections();
        return;
      } catch (e) {
        if (e instanceof IlsSessionError && !["closed", "timeout"].includes(e.code)) {
          // refused (unauthorized, removed, ended, session_full): no point in trying again
          this.reconnecting = false;
          this.closed = true;
          this.emit("error", e, null);
          this.emit("close", { code, reason: `${reason || "connection lost"}; rejoin refused: ${e.code}` }, null);
          return;
        }
        try { this.ws.close(); } catch (_) { /* already closed */ }
      }
    }
    this.reconnecting = false;
    this.closed = true;
    this.emit("close", { code, reason: `${reason || "connection lost"}; could not reconnect` }, null);
  }

  /** After a rejoin as a new participant: its old connections are gone on the server; make
   * them again (a publish the new participant may not do yet is dropped with an `error`). */
  async remakeConnections() {
    for (const pc of /** @type {const} */ (["subscribe", "publish"])) {
      try {
        await this.renegotiate(pc, "rejoined");
      } catch (e) {
        if (pc === "publish") this.unpublish(false);
        this.emit("error", e instanceof IlsSessionError ? e : new IlsSessionError("media", String(e)), null);
      }
    }
  }

  /** Participants in one place (stage, green_room, backstage). @param {Place} place */
  inPlace(place) {
    return [...this.participants.values()].filter((p) => p.place === place);
  }

  /** Sends `leave`, closes the peer connections and the socket. */
  close() {
    if (!this.closed) {
      try { this.send({ type: "leave" }); } catch (_) { /* already closed */ }
    }
    if (this.publication) this.publication.close();
    if (this.subscription) this.subscription.close();
    try { this.ws.close(1000, "leave"); } catch (_) { /* already closed */ }
    this.closed = true;
  }

  // ---------------------------------------------------------------------------------------------
  // Media

  /**
   * Publishes `stream` (camera + mic) on a send-only connection with 3-layer VP8 simulcast
   * (rid q/h/f). Without `stream`, opens the camera (1280x720@30 so that Chromium allows 3 layers).
   * @param {MediaStream} [stream]
   * @param {{simulcast?:boolean}} [opts]
   * @returns {Promise<Publication>}
   */
  async publish(stream, opts = {}) {
    const own = !stream;
    const media = stream || (await navigator.mediaDevices.getUserMedia({ video: CAMERA, audio: true }));
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    const pub = new Publication(pc, media);
    pub.opts = { ...opts };
    try {
      if (!addSendTransceivers(pc, media, opts.simulcast)) {
        throw new IlsSessionError("media", "nothing to publish: no camera or microphone track");
      }
      pub.negotiations.offers += 1;
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc, ICE_WAIT_MS);
      pub.offer = pc.localDescription ? pc.localDescription.sdp : "";
      const reply = await this.request({ type: "publish", sdp: pub.offer }, "answer");
      pub.answer = reply.sdp;
      pub.negotiations.answers += 1;
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
    } catch (e) {
      pc.close();
      if (own) media.getTracks().forEach((t) => t.stop());
      throw e;
    }
    if (this.publication) this.publication.close();
    this.publication = pub;
    return pub;
  }

  /** Stops publishing (closes the send-only connection and, if the client opened it, the camera). */
  unpublish(stopTracks = true) {
    if (this.publication) this.publication.close(stopTracks);
    this.publication = null;
  }

  /**
   * Opens the receive-only connection with a fixed number of video and audio slots. The server's
   * answer names the slot of every m-line; later stage changes only re-map slots (`slots` events).
   * @param {{videoSlots:number, audioSlots:number, codecs?:string[]}} req  `codecs`: mime types to
   *   offer (default SUBSCRIBE_CODECS; [] = every codec the browser has)
   * @returns {Promise<Subscription>}
   */
  async subscribe({ videoSlots, audioSlots, codecs = SUBSCRIBE_CODECS }) {
    if (this.subscription) throw new IlsSessionError("conflict", "already subscribed: slots are fixed for the connection's life");
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    const sub = new Subscription(pc);
    sub.codecs = codecs;
    try {
      /** @type {RTCRtpTransceiver[]} */
      const trs = [];
      for (let i = 0; i < videoSlots; i++) trs.push(pc.addTransceiver("video", { direction: "recvonly" }));
      for (let i = 0; i < audioSlots; i++) trs.push(pc.addTransceiver("audio", { direction: "recvonly" }));
      for (const t of trs) preferCodecs(t, /** @type {"audio"|"video"} */ (t.receiver.track.kind), codecs);
      sub.negotiations.offers += 1;
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc, ICE_WAIT_MS);
      sub.offer = pc.localDescription ? pc.localDescription.sdp : "";
      // The subscription exists before the answer arrives: a `slots` event right after it is applied.
      this.subscription = sub;
      const reply = await this.request({ type: "subscribe", sdp: sub.offer, video_slots: videoSlots, audio_slots: audioSlots }, "answer");
      sub.answer = reply.sdp;
      sub.negotiations.answers += 1;
      await pc.setRemoteDescription({ type: "answer", sdp: reply.sdp });
      const byMid = new Map(pc.getTransceivers().map((t) => [String(t.mid), t]));
      /** @type {any[]} */
      // Slot numbers count per kind, in m-line order (docs/protocol.md `answer`).
      const slots = reply.slots && reply.slots.length ? reply.slots
        : trs.map((t, i) => ({ slot: i < videoSlots ? i : i - videoSlots, kind: t.receiver.track.kind, mid: t.mid }));
      for (const s of slots) {
        const prev = sub.slots.get(slotKey(s.kind, s.slot));
        sub.slots.set(slotKey(s.kind, s.slot), {
          slot: s.slot, kind: s.kind, mid: String(s.mid), transceiver: byMid.get(String(s.mid)) || null,
          participant: prev ? prev.participant : null, layer: prev ? prev.layer : "", size: null,
        });
      }
      if (reply.mapping) sub.applyMapping(reply.mapping);
      else if (sub.mapped.size) sub.applyMapping([...sub.mapped.values()]);
    } catch (e) {
      pc.close();
      this.subscription = null;
      throw e;
    }
    this.emit("slots", { subscription: sub, mapping: [], changed: new Set(sub.streams.keys()) }, null);
    return sub;
  }

  /**
   * Server-initiated renegotiation (`renegotiate`): the server lost the `pc` connection, so this
   * makes it again with what it had — `publish` with the same tracks and options, or `subscribe`
   * with the same slot counts, codecs and slot sizes — and emits `renegotiated`
   * ({pc, cause, publication|subscription}). Nothing to do when that connection is not open here.
   * @param {"publish"|"subscribe"} pc
   * @param {string} [cause]
   */
  async renegotiate(pc, cause = "") {
    if (pc === "publish") {
      const old = this.publication;
      if (!old || old.closed) return;
      old.close(false); // keep the camera and mic: the new connection sends the same tracks
      this.publication = null;
      const publication = await this.publish(old.stream, old.opts);
      this.emit("renegotiated", { pc, cause, publication }, null);
    } else if (pc === "subscribe") {
      const old = this.subscription;
      if (!old || old.closed) return;
      const slots = [...old.slots.values()];
      const videoSlots = slots.filter((s) => s.kind === "video").length;
      const audioSlots = slots.length - videoSlots;
      old.close();
      this.subscription = null;
      const subscription = await this.subscribe({ videoSlots, audioSlots, codecs: old.codecs });
      for (const s of slots) {
        if (s.kind === "video" && s.size) await this.setSlotSize(s.slot, s.size);
      }
      this.emit("renegotiated", { pc, cause, subscription }, null);
    }
  }

  /**
   * Asks for a size on one video slot; the server picks the simulcast layer.
   * @param {number} slot  video slot number
   * @param {SlotSize} size
   */
  setSlotSize(slot, size) {
    if (this.subscription) {
      const s = this.subscription.slots.get(slotKey("video", slot));
      if (s) s.size = size;
    }
    return this.action({ type: "slot_size", slot, size });
  }

  // ---------------------------------------------------------------------------------------------
  // Audience participation

  /** @param {string} text */
  chat(text) { return this.action({ type: "chat", text }); }
  /** Producer: hide a message for everyone. @param {string|number} msgId */
  hideChat(msgId) { return this.action({ type: "chat_hide", msg_id: msgId }); }
  /** Producer: show (or stop showing) a message to hosts. @param {string|number} msgId @param {boolean} [toHosts] */
  featureChat(msgId, toHosts = true) { return this.action({ type: "chat_feature", msg_id: msgId, to_hosts: toHosts }); }
  /** @param {string} emoji */
  react(emoji) { return this.action({ type: "react", emoji }); }
  /** @param {boolean} raised */
  hand(raised) { return this.action({ type: "hand", raised }); }
  /** Producer. @param {string} question @param {string[]} options */
  createPoll(question, options) { return this.action({ type: "poll_create", question, options }); }
  /** @param {string|number} pollId @param {number} option  index into the poll's options */
  vote(pollId, option) { return this.action({ type: "poll_vote", poll_id: pollId, option }); }
  /** Producer. @param {string|number} pollId */
  closePoll(pollId) { return this.action({ type: "poll_close", poll_id: pollId }); }
  /**
   * App message (JSON ≤ the server's MAX_APP_BYTES).
   * @param {{all:true}|{role:Role}|{participant:string}} to
   * @param {any} data
   */
  app(to, data) { return this.action({ type: "app", to: "participant" in to ? { participant: pid(to.participant) } : to, data }); }

  // ---------------------------------------------------------------------------------------------
  // Producer actions

  /** @param {string} participant @param {"audience"|"green_room"|"stage"} to */
  move(participant, to) { return this.action({ type: "move", participant: pid(participant), to }); }
  /** Invite a viewer to the green room (its client is asked to publish camera + mic). @param {string} participant */
  invite(participant) { return this.action({ type: "invite", participant: pid(participant) }); }
  /** @param {string} participant @param {{audio?:boolean, video?:boolean}} what */
  mute(participant, what) { return this.action({ type: "mute", participant: pid(participant), ...what }); }
  /** @param {string} participant @param {string} [reason] */
  remove(participant, reason) { return this.action(reason ? { type: "remove", participant: pid(participant), reason } : { type: "remove", participant: pid(participant) }); }
  /** End the session for everyone. */
  end() { return this.action({ type: "end" }); }
  /** Push a layout (any JSON) to every viewer. @param {any} layout */
  pushLayout(layout) { return this.action({ type: "layout", layout }); }
  /**
   * Producer: one page of the audience list.
   * @param {{cursor?:number, limit?:number}} [q]
   * @returns {Promise<{items:Participant[], next_cursor?:number}>}
   */
  async audiencePage(q = {}) {
    /** @type {any} */
    const msg = { type: "audience_page", limit: q.limit ?? 50 };
    if (q.cursor !== undefined && q.cursor !== null) msg.cursor = q.cursor;
    const r = await this.request(msg, "audience_page");
    return { items: r.items || [], next_cursor: r.next_cursor };
  }
}

/**
 * Token for a page: `?token=` in the URL, else a dev token for `?room=` (default "demo") and `role`
 * from a server started with --dev (`?name=` becomes the identity).
 * @param {Role} role
 * @param {string} [base]
 * @returns {Promise<{token:string, room:string, name:string}>}
 */
export async function pageToken(role, base) {
  const q = new URLSearchParams(globalThis.location ? globalThis.location.search : "");
  const room = q.get("room") || "demo";
  const name = q.get("name") || `${role}-${Math.random().toString(36).slice(2, 6)}`;
  const given = q.get("token");
  if (given) return { token: given, room, name };
  const url = `${base || (globalThis.location ? globalThis.location.origin : "")}/api/dev/token?room=${encodeURIComponent(room)}&role=${role}&identity=${encodeURIComponent(name)}&name=${encodeURIComponent(name)}`;
  const res = await fetch(url);
  if (res.status === 404) throw new IlsSessionError("no_token", "no ?token= in the URL and no dev mode: start ils-control with --dev or pass ?token=");
  if (!res.ok) throw new IlsSessionError("no_token", `${res.status}: ${(await res.text()).trim().slice(0, 200)}`);
  const body = await res.json();
  return { token: body.token, room, name };
}
