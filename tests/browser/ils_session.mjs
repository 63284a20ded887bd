// Real-browser ILS session scenario (issue 5): headless Debian Chromium (playwright-core) drives the
// web app pages (control/web/studio.html, producer.html, viewer.html and their ils-client.js)
// against a real ils-control over its /ws session protocol; getStats() per slot decides.
//
//   1. pages load and join (welcome); a host publishes from the studio into the green room: the
//      producer decodes the host, viewers are not given the host's media;
//   2. the producer brings the host on stage: 3 viewers decode the host (framesDecoded grows);
//   3. viewer3 raises a hand, the producer invites it, viewer3 previews and joins the green room
//      (publishes), the producer brings it on stage: viewers 1 and 2 decode viewer3's video within
//      1 s with no renegotiation (their subscriber connections made exactly one offer and applied
//      one answer, before and after; no new `answer` on their sockets);
//   4. the producer moves viewer3 back to the green room: its media stops reaching viewers (the
//      slot's framesDecoded stops growing) while the host keeps playing and the producer still sees it;
//   5. chat round trip (viewer → viewers + producer; hosts only after the producer features it;
//      a hidden message disappears); a poll with votes and live results (second vote refused);
//      a reaction burst arrives aggregated (fewer `reactions` messages than reactions, same sum);
//      a pushed layout; the viewer grid is side by side in landscape, stacked in portrait;
//      5e. viewer1's signaling socket drops (closed with 4000): the client resumes the same
//      participant (hello{resume:true}) without renegotiating, the host keeps playing;
//      5f. the media engine is SIGKILLed (RELIABILITY F2): control restarts it and sends
//      `renegotiate`; every page's ils-client.js makes its connections again by itself, the host
//      keeps its stage place and all 3 viewers decode it again within 15 s;
//   6. screenshots of every page into $ILS_ARTIFACTS (ils-*.png).
//
// Run through run.sh (ILS_SESSION_TEST=1 or ILS_SESSION_ONLY=1): it makes the loopback-only network
// namespace. If ils-control does not serve the app pages yet (GET /viewer.html is not 200), a small
// Node front server serves control/web/ from disk and forwards everything else (HTTP and the /ws
// WebSocket upgrade) to ils-control; the log says which.
//
// --mock: no ils at all: the script's own stand-in serves control/web/ and speaks /ws (node), and
// a Chromium page answers the SDP offers and forwards each publisher's video into subscriber slots
// (replaceTrack). It checks the pages, ils-client.js and this script, not ils.
//
// Environment (all optional):
//   ILS_CONTROL_BIN     path of ils-control (required; run.sh sets it)
//   ILS_HTTP            control's HTTP listen address, default 127.0.0.1:18080
//   ILS_WEB_HTTP        the fallback front server's address, default 127.0.0.1:18081
//   ILS_DATA_DIR        data dir (default: a fresh temp dir)
//   ILS_CONTROL_ARGS    extra arguments for ils-control (space separated)
//   CHROMIUM            browser binary, default /usr/bin/chromium
//   ILS_ARTIFACTS       where screenshots, stats and logs go, default tests/browser/artifacts
//   ILS_TEST_TIMEOUT_S  whole-test deadline, default 240
//   ILS_FORCE_FRONT     1: use the front server even when control serves the pages (tests the forwarding)
//
// Exit 0 when every check passed, 1 otherwise; the last line is "browser ils session: N passed, M failed".

import { createHash } from "node:crypto";
import { createServer, request as httpRequest } from "node:http";
import { connect as netConnect } from "node:net";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ControlProcess, check, hostPort, intEnv, launchChromium, log, runTest, sleep, t0 } from "./harness.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const WEB_DIR = resolve(HERE, "../../control/web");
const HTTP = process.env.ILS_HTTP || "127.0.0.1:18080";
const BASE = `http://${HTTP}`;
const WEB_HTTP = process.env.ILS_WEB_HTTP || "127.0.0.1:18081";
const ROOM = "ilstest";
const MOCK = process.argv.includes("--mock");
const ARTIFACTS = process.env.ILS_ARTIFACTS || join(HERE, "artifacts");
const DEADLINE_S = intEnv("ILS_TEST_TIMEOUT_S", 240);
/** Frames each viewer must decode of the first host once it is live. */
const MIN_FRAMES = 30;
/** How long a first decode may take after a stage move (the bound). */
const STAGE_DECODE_MS = 1_000;
/** Longest wait for the first host's video at viewers (includes DTLS + first keyframe). */
const FIRST_MEDIA_TIMEOUT_MS = 30_000;
/** After a move off stage: frames still allowed on the slot between +1 s and +3 s (in-flight). */
const OFF_STAGE_MAX_FRAMES = 2;
/** How long every viewer may take to decode the host again after the media engine is killed
 * (supervisor restart ≤ ~0.5 s, new connections incl. ICE gathering ≤ 1 s, DTLS, keyframe). */
const ENGINE_RESTART_RECOVERY_MS = 15_000;
/** Reactions each viewer sends in the burst (per emoji, two emoji). */
const REACTIONS_PER_VIEWER = 15; // 30 per viewer: over the per-participant burst (20), some are refused
/** Pages of the app served from control/web (the fallback front server serves these from disk). */
const APP_FILES = {
  "/": ["index.html", "text/html; charset=utf-8"],
  "/ils.js": ["ils.js", "text/javascript; charset=utf-8"],
  "/ils-client.js": ["ils-client.js", "text/javascript; charset=utf-8"],
  "/ils-app.js": ["ils-app.js", "text/javascript; charset=utf-8"],
  "/ils-app.css": ["ils-app.css", "text/css; charset=utf-8"],
  "/studio.html": ["studio.html", "text/html; charset=utf-8"],
  "/producer.html": ["producer.html", "text/html; charset=utf-8"],
  "/viewer.html": ["viewer.html", "text/html; charset=utf-8"],
};

const TITLE = `browser ils session${MOCK ? " (mock server)" : ""}`;

// ------------------------------------------------------------------------------------------
// Checks (check() and the summary are in harness.mjs)

/** A precondition: records the check and stops the scenario when it failed. */
function need(name, ok, detail = "") {
  if (!check(name, ok, detail)) throw new Error(`stopped: "${name}" failed; later steps depend on it`);
}

// ------------------------------------------------------------------------------------------
// ils-control, and the fallback front server for the app pages

class Control extends ControlProcess {
  constructor() {
    super(HTTP, "ils-session-");
  }
  start() {
    return this.spawnAndWait(join(ARTIFACTS, "ils-control.log"), 30_000);
  }
}

/**
 * Serves control/web/ from disk and forwards every other request, WebSocket upgrades included,
 * to ils-control. Used only while control does not serve the app pages itself.
 */
function startFront() {
  const [chost, cport] = hostPort(HTTP);
  const server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const file = req.method === "GET" ? APP_FILES[path] : undefined;
    if (file && existsSync(join(WEB_DIR, file[0]))) {
      res.writeHead(200, { "Content-Type": file[1], "Cache-Control": "no-store" });
      return res.end(readFileSync(join(WEB_DIR, file[0])));
    }
    const up = httpRequest({ host: chost, port: cport, method: req.method, path: req.url, headers: req.headers }, (ur) => {
      res.writeHead(ur.statusCode || 502, ur.headers);
      ur.pipe(res);
    });
    up.on("error", (e) => { res.writeHead(502, { "Content-Type": "text/plain" }); res.end(`front: ${e.message}\n`); });
    req.pipe(up);
  });
  server.on("upgrade", (req, socket, head) => {
    const up = netConnect(cport, chost, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      up.write(lines.join("\r\n") + "\r\n\r\n");
      if (head && head.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    const end = () => { socket.destroy(); up.destroy(); };
    up.on("error", end);
    socket.on("error", end);
    up.on("close", end);
    socket.on("close", end);
  });
  const [host, port] = hostPort(WEB_HTTP);
  return new Promise((r, j) => server.listen(port, host, () => r(server)).once("error", j));
}

// ------------------------------------------------------------------------------------------
// --mock: a stand-in for ils-control (no ils at all), to check the pages, ils-client.js and this
// script while the real /ws is not there. Node serves control/web/ and speaks the /ws protocol
// (docs/protocol.md, the parts the scenario uses, no rate limits); a Chromium "media server" page
// answers publish/subscribe offers and forwards each publisher's received video into subscriber
// slots with replaceTrack (slot changes re-map senders, no renegotiation; audio slots stay silent).

const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** Minimal RFC 6455 server side: unfragmented text frames, close, ping. */
class MockSocket {
  constructor(socket, onText, onClose) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.open = true;
    socket.on("data", (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      for (;;) {
        const f = this.parse();
        if (!f) break;
        if (f.op === 1) onText(f.data.toString("utf8"));
        else if (f.op === 8) { this.close(); break; } else if (f.op === 9) this.frame(10, f.data);
      }
    });
    const gone = () => { if (this.open) { this.open = false; onClose(); } };
    socket.on("close", gone);
    socket.on("error", gone);
  }
  parse() {
    const b = this.buf;
    if (b.length < 2) return null;
    const op = b[0] & 15;
    let len = b[1] & 127;
    let off = 2;
    if (len === 126) { if (b.length < 4) return null; len = b.readUInt16BE(2); off = 4; } else if (len === 127) { if (b.length < 10) return null; len = Number(b.readBigUInt64BE(2)); off = 10; }
    const masked = (b[1] & 128) !== 0;
    const need = off + (masked ? 4 : 0) + len;
    if (b.length < need) return null;
    const mask = masked ? b.subarray(off, off + 4) : null;
    const data = Buffer.from(b.subarray(off + (masked ? 4 : 0), need));
    if (mask) for (let i = 0; i < data.length; i++) data[i] ^= mask[i & 3];
    this.buf = b.subarray(need);
    return { op, data };
  }
  frame(op, data) {
    if (!this.open) return;
    const n = data.length;
    const head = n < 126 ? Buffer.from([128 | op, n]) : n < 65536 ? Buffer.from([128 | op, 126, n >> 8, n & 255]) : Buffer.concat([Buffer.from([128 | op, 127]), (() => { const x = Buffer.alloc(8); x.writeBigUInt64BE(BigInt(n)); return x; })()]);
    this.socket.write(Buffer.concat([head, data]));
  }
  send(obj) { this.frame(1, Buffer.from(JSON.stringify(obj))); }
  close() { if (this.open) { this.frame(8, Buffer.alloc(0)); this.open = false; this.socket.end(); } }
}

class MockIls {
  constructor(browser) {
    this.browser = browser;
    this.nextId = 1;
    this.nextMsg = 1;
    /** @type {Map<number, any>} */
    this.ps = new Map();
    this.chat = [];
    this.polls = new Map();
    this.votes = new Set();
    this.reactions = {};
    this.layout = null;
    this.timer = null;
  }
  async start() {
    const ctx = await this.browser.newContext();
    this.media = await ctx.newPage();
    this.media.on("console", (m) => { if (m.type() === "error") log(`[mock media console] ${m.text()}`); });
    this.server = createServer((req, res) => this.http(req, res));
    this.server.on("upgrade", (req, socket) => this.upgrade(req, socket));
    const [host, port] = hostPort(HTTP);
    await new Promise((r, j) => this.server.listen(port, host, r).once("error", j));
    await this.media.goto(`${BASE}/mockmedia`);
    await this.media.evaluate(installMockMedia);
    this.timer = setInterval(() => this.tick(), 500);
    log(`mock ils on ${BASE} (node /ws + a forwarding Chromium page; ils-control is not involved)`);
  }
  async stop() { clearInterval(this.timer); for (const p of this.ps.values()) p.ws.close(); this.server.close(); }
  http(req, res) {
    const url = new URL(req.url, BASE);
    const file = APP_FILES[url.pathname];
    if (req.method === "GET" && file) {
      res.writeHead(200, { "Content-Type": file[1] });
      return res.end(readFileSync(join(WEB_DIR, file[0])));
    }
    if (url.pathname === "/mockmedia") { res.writeHead(200, { "Content-Type": "text/html" }); return res.end("<!doctype html><title>mock media</title>"); }
    if (url.pathname === "/api/dev/token") {
      res.writeHead(200, { "Content-Type": "application/json" });
      const claims = { role: url.searchParams.get("role"), name: url.searchParams.get("name") || "anon", room: url.searchParams.get("room") };
      return res.end(JSON.stringify({ token: Buffer.from(JSON.stringify(claims)).toString("base64url") }));
    }
    res.writeHead(404, { "Content-Type": "text/plain" });
    res.end("not found\n");
  }
  upgrade(req, socket) {
    if (new URL(req.url, BASE).pathname !== "/ws") return socket.destroy();
    const accept = createHash("sha1").update(req.headers["sec-websocket-key"] + WS_GUID).digest("base64");
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    let me = null;
    const ws = new MockSocket(socket, (text) => {
      let m;
      try { m = JSON.parse(text); } catch { return ws.send({ type: "error", code: "bad_message", reason: "not JSON" }); }
      if (!me) {
        if (m.type !== "hello") return ws.send({ type: "error", code: "not_joined", reason: "send hello first", rid: m.rid });
        me = this.join(ws, m);
        return;
      }
      this.handle(me, m).catch((e) => ws.send({ type: "error", code: "internal", reason: e.message.split("\n")[0], rid: m.rid }));
    }, () => { if (me) this.leave(me); });
  }
  info(p) { return { id: p.id, name: p.name, role: p.role, place: p.place, muted: p.muted, publishing: p.publishing }; }
  /** Who may see a participant in `place` (docs/protocol.md "Who sees whom"). */
  sees(viewer, place) {
    if (place === "stage") return true;
    if (place === "green_room" || place === "backstage") return viewer.place !== "audience";
    return false;
  }
  chatVisible(p, c) { return p.role !== "host" || c.featured || c.from.role !== "viewer"; }
  join(ws, hello) {
    let claims = {};
    try { claims = JSON.parse(Buffer.from(hello.token, "base64url").toString()); } catch { /* */ }
    const role = claims.role || "viewer";
    const p = { id: this.nextId++, name: hello.name || claims.name, role, place: { host: "green_room", producer: "backstage" }[role] || "audience",
      muted: { audio: false, video: false }, publishing: false, ws, hand: false, sub: null, vmap: [], amap: [], sizes: {} };
    this.ps.set(p.id, p);
    const all = [...this.ps.values()];
    ws.send({ type: "welcome", v: 1, rid: hello.rid,
      you: { id: p.id, role, name: p.name, place: p.place, grants: { publish: role !== "viewer", subscribe: true, chat: true, admin: role === "producer" } },
      state: { stage: all.filter((x) => x.place === "stage").map((x) => this.info(x)),
        green_room: p.place === "audience" ? [] : all.filter((x) => x.place === "green_room").map((x) => this.info(x)),
        producers: p.place === "audience" ? [] : all.filter((x) => x.role === "producer").map((x) => this.info(x)),
        audience_count: all.filter((x) => x.place === "audience").length,
        chat: this.chat.filter((c) => this.chatVisible(p, c)).slice(-50), polls: [...this.polls.values()],
        hands: role === "producer" ? all.filter((x) => x.hand).map((x) => this.info(x)) : [],
        layout: this.layout, limits: { reaction_window_ms: 500, max_video_slots: 25, max_audio_slots: 8 } } });
    this.announce(p, null);
    this.audience();
    return p;
  }
  leave(p) {
    this.ps.delete(p.id);
    for (const q of this.ps.values()) if (this.sees(q, p.place)) q.ws.send({ type: "participant_left", id: p.id });
    this.media.evaluate((id) => window.sfu.close(id), p.id).catch(() => {});
    this.audience();
    this.remap();
  }
  /** participant / participant_left to everyone whose view of `p` changed. */
  announce(p, from) {
    for (const q of this.ps.values()) {
      if (q === p) continue;
      const before = from !== null && this.sees(q, from);
      const now = this.sees(q, p.place);
      if (now) q.ws.send({ type: "participant", ...this.info(p) });
      else if (before) q.ws.send({ type: "participant_left", id: p.id });
    }
  }
  move(p, to) {
    const from = p.place;
    if (from === to) return;
    p.place = to;
    if (p.hand && to !== "audience") { p.hand = false; this.toProducers({ type: "hand", participant: p.id, name: p.name, raised: false }); }
    p.ws.send({ type: "moved", participant: p.id, to });
    this.toProducers({ type: "moved", participant: p.id, to }, p);
    if (from === "audience") p.ws.send({ type: "invited", by: 0 });
    // the moved participant learns who it can see now
    for (const q of this.ps.values()) {
      if (q === p) continue;
      const was = this.sees({ place: from }, q.place), is = this.sees(p, q.place);
      if (is && !was) p.ws.send({ type: "participant", ...this.info(q) });
      else if (was && !is) p.ws.send({ type: "participant_left", id: q.id });
    }
    this.announce(p, from);
    this.audience();
    this.remap();
  }
  /** audience_count to everyone (not coalesced: the mock has few participants). */
  audience() { this.everyone({ type: "audience_count", count: [...this.ps.values()].filter((x) => x.place === "audience").length }); }
  toProducers(msg, except) { for (const q of this.ps.values()) if (q.role === "producer" && q !== except) q.ws.send(msg); }
  everyone(msg) { for (const q of this.ps.values()) q.ws.send(msg); }
  /** Re-maps every subscriber's slots (stable: a participant keeps its slot while visible). */
  remap() {
    for (const q of this.ps.values()) {
      if (!q.sub) continue;
      const vis = [...this.ps.values()].filter((x) => x.publishing && x.place !== "audience" && x.place !== "backstage" && (x.place === "stage" || q.place !== "audience") && (q.place !== "stage" || x.place === "stage"));
      const ids = new Set(vis.map((x) => x.id));
      let changed = false;
      for (const [kind, map, n] of [["video", q.vmap, q.sub.video], ["audio", q.amap, q.sub.audio]]) {
        for (let i = 0; i < n; i++) if (map[i] !== null && map[i] !== undefined && !ids.has(map[i])) { map[i] = null; changed = true; }
        for (const x of vis) {
          if (map.includes(x.id)) continue;
          let free = -1;
          for (let i = 0; i < n; i++) if (map[i] === null || map[i] === undefined) { free = i; break; }
          if (free < 0) continue;
          map[free] = x.id;
          changed = true;
        }
        for (let i = 0; i < n; i++) if (map[i] === undefined) map[i] = null;
        this.media.evaluate(([sub, kind, map]) => window.sfu.map(sub, kind, map), [q.id, kind, map]).catch((e) => log(`mock map: ${e.message}`));
      }
      if (changed || !q.sub.announced) {
        q.sub.announced = true;
        const rid = (slot) => ({ thumbnail: "q", medium: "h", full: "f" })[q.sizes[slot] || "full"];
        q.ws.send({ type: "slots", mapping: [...q.vmap.map((p, slot) => ({ slot, participant: p, kind: "video", layer: p ? rid(slot) : null })),
          ...q.amap.map((p, slot) => ({ slot, participant: p, kind: "audio", layer: null }))] });
      }
    }
  }
  tick() {
    if (Object.keys(this.reactions).length) { this.everyone({ type: "reactions", window_ms: 500, counts: this.reactions }); this.reactions = {}; }
    for (const poll of this.polls.values()) if (poll.dirty) { poll.dirty = false; const { dirty, ...pl } = poll; this.everyone({ type: "poll", poll: pl }); }
  }
  async handle(p, m) {
    const ack = () => m.rid && p.ws.send({ type: "ack", rid: m.rid });
    const err = (code, reason) => p.ws.send({ type: "error", code, reason, rid: m.rid });
    const admin = p.role === "producer";
    const target = this.ps.get(Number(m.participant));
    switch (m.type) {
      case "publish": {
        if (p.role === "viewer" && p.place === "audience") return err("not_allowed", "viewers publish only after an invite");
        const sdp = await this.media.evaluate(([id, offer]) => window.sfu.publish(id, offer), [p.id, m.sdp]);
        p.ws.send({ type: "answer", sdp, rid: m.rid });
        await until(() => this.media.evaluate((id) => window.sfu.hasVideo(id), p.id), 10_000, 100);
        p.publishing = true;
        this.announce(p, p.place);
        return this.remap();
      }
      case "subscribe": {
        const r = await this.media.evaluate(([id, offer]) => window.sfu.subscribe(id, offer), [p.id, m.sdp]);
        p.sub = { video: m.video_slots, audio: m.audio_slots, announced: false };
        p.vmap = []; p.amap = [];
        p.ws.send({ type: "answer", sdp: r.sdp, slots: r.slots, rid: m.rid });
        return this.remap();
      }
      case "chat": {
        const c = { id: this.nextMsg++, from: { id: p.id, name: p.name, role: p.role }, text: m.text, ts: Date.now() - t0, featured: false };
        this.chat.push(c);
        for (const q of this.ps.values()) if (this.chatVisible(q, c)) q.ws.send({ type: "chat", msg: c });
        return ack();
      }
      case "chat_feature": case "chat_hide": {
        if (!admin) return err("not_allowed", "producers only");
        const c = this.chat.find((x) => x.id === m.msg_id);
        if (!c) return err("not_found", "no such message");
        if (m.type === "chat_hide") { this.chat = this.chat.filter((x) => x !== c); this.everyone({ type: "chat_hidden", msg_id: c.id }); return ack(); }
        c.featured = !!m.to_hosts;
        for (const q of this.ps.values()) {
          if (q.role === "producer") q.ws.send({ type: "chat", msg: c });
          else if (q.role === "host") q.ws.send(c.featured ? { type: "chat", msg: c } : { type: "chat_hidden", msg_id: c.id });
        }
        return ack();
      }
      case "react": {
        // token bucket as docs/protocol.md: 10/s sustained, burst 20
        const now = Date.now();
        p.rb = Math.min(20, (p.rb ?? 20) + ((now - (p.rbAt || now)) / 1000) * 10);
        p.rbAt = now;
        if (p.rb < 1) return err("rate_limited", "reactions: 10/s, burst 20");
        p.rb -= 1;
        this.reactions[m.emoji] = (this.reactions[m.emoji] || 0) + 1;
        return ack();
      }
      case "mute":
        if (!admin) return err("not_allowed", "producers only");
        if (!target) return err("not_found", "no such participant");
        if (m.audio !== undefined) target.muted.audio = !!m.audio;
        if (m.video !== undefined) target.muted.video = !!m.video;
        target.ws.send({ type: "muted", ...target.muted });
        this.announce(target, target.place);
        return ack();
      case "end":
        if (!admin) return err("not_allowed", "producers only");
        ack();
        this.everyone({ type: "ended", reason: "ended by a producer" });
        for (const q of this.ps.values()) q.ws.close();
        return;
      case "hand":
        if (p.place !== "audience") return err("not_allowed", "hands are for the audience");
        p.hand = !!m.raised;
        this.toProducers({ type: "hand", participant: p.id, name: p.name, raised: p.hand });
        return ack();
      case "poll_create": {
        if (!admin) return err("not_allowed", "producers only");
        const poll = { id: this.polls.size + 1, question: m.question, options: m.options, counts: m.options.map(() => 0), closed: false };
        this.polls.set(poll.id, poll);
        this.everyone({ type: "poll", poll });
        return ack();
      }
      case "poll_vote": {
        const poll = this.polls.get(Number(m.poll_id));
        if (!poll) return err("not_found", "no such poll");
        const key = `${poll.id}:${p.name}`;
        if (this.votes.has(key) || poll.closed) return err("conflict", "already voted");
        this.votes.add(key);
        poll.counts[m.option] += 1;
        poll.dirty = true;
        return ack();
      }
      case "move": case "invite":
        if (!admin) return err("not_allowed", "producers only");
        if (!target) return err("not_found", "no such participant");
        this.move(target, m.type === "invite" ? "green_room" : m.to);
        return ack();
      case "layout":
        if (!admin) return err("not_allowed", "producers only");
        this.layout = m.layout;
        this.everyone({ type: "layout", layout: m.layout });
        return ack();
      case "app":
        for (const q of this.ps.values()) if (m.to.all || q.role === m.to.role || q.id === m.to.participant) q.ws.send({ type: "app", from: p.id, data: m.data });
        return ack();
      case "slot_size": // the mock forwards what it has; it only reports the layer a size would pick
        p.sizes[m.slot] = m.size;
        if (p.sub) p.sub.announced = false;
        this.remap();
        return ack();
      case "trickle": case "remove": case "poll_close": case "leave":
        return ack();
      default:
        return err("bad_message", `unknown type ${m.type}`);
    }
  }
}

/** Runs in the mock media page: one PC per publisher and per subscriber, slots = senders. */
function installMockMedia() {
  window.sfu = (() => {
    const pubs = new Map();
    const subs = new Map();
    async function finish(pc) {
      await pc.setLocalDescription(await pc.createAnswer());
      if (pc.iceGatheringState !== "complete") {
        await new Promise((r) => { setTimeout(r, 1000); pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && r()); });
      }
      return pc.localDescription.sdp;
    }
    return {
      async publish(id, offer) {
        const pc = new RTCPeerConnection();
        const tracks = {};
        pc.addEventListener("track", (ev) => { tracks[ev.track.kind] = ev.track; });
        pubs.set(id, { pc, tracks });
        await pc.setRemoteDescription({ type: "offer", sdp: offer });
        return finish(pc);
      },
      hasVideo(id) { const p = pubs.get(id); return !!(p && p.tracks.video && p.pc.connectionState === "connected"); },
      async subscribe(id, offer) {
        const pc = new RTCPeerConnection();
        await pc.setRemoteDescription({ type: "offer", sdp: offer });
        const byKind = { video: [], audio: [] };
        for (const t of pc.getTransceivers()) { t.direction = "sendonly"; byKind[t.receiver.track.kind].push(t); }
        subs.set(id, { pc, byKind });
        const sdp = await finish(pc);
        const slots = [...byKind.video.map((t, slot) => ({ slot, kind: "video", mid: t.mid })), ...byKind.audio.map((t, slot) => ({ slot, kind: "audio", mid: t.mid }))];
        return { sdp, slots };
      },
      async map(id, kind, map) {
        const s = subs.get(id);
        if (!s) return;
        for (let i = 0; i < s.byKind[kind].length; i++) {
          const p = map[i] !== null && map[i] !== undefined ? pubs.get(map[i]) : null;
          const track = p && kind === "video" ? p.tracks.video || null : null; // remote audio cannot be re-sent
          if (s.byKind[kind][i].sender.track !== track) await s.byKind[kind][i].sender.replaceTrack(track);
        }
      },
      close(id) { for (const m of [pubs, subs]) { const x = m.get(id); if (x) x.pc.close(); m.delete(id); } },
    };
  })();
}

// ------------------------------------------------------------------------------------------
// Page helpers (everything goes through the pages and their window.ilsPage)

let WEB = BASE;

async function openApp(browser, label, path, viewport = { width: 1100, height: 800 }) {
  const ctx = await browser.newContext({ viewport });
  const page = await ctx.newPage();
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") log(`[${label} console] ${m.text()}`); });
  page.on("pageerror", (e) => log(`[${label} pageerror] ${e.message}`));
  const url = `${WEB}/${path}${path.includes("?") ? "&" : "?"}room=${ROOM}&name=${label}`;
  const res = await page.goto(url);
  const status = res ? res.status() : 0;
  const state = await page.waitForFunction(() => window.ilsPage && (window.ilsPage.ready || window.ilsPage.failed) && window.ilsPage, null, { timeout: 30_000 })
    .then((h) => h.jsonValue().then((p) => ({ ready: !!p.ready, failed: p.failed || "" })))
    .catch((e) => ({ ready: false, failed: `page never became ready: ${e.message.split("\n")[0]}` }));
  const error = await page.textContent("#error").catch(() => "");
  return { label, page, status, ...state, error };
}

const idOf = (page) => page.evaluate(() => String(window.ilsPage.client.you.id));
const placeOf = (page) => page.evaluate(() => window.ilsPage.client.you.place);

/** Video frames decoded in the slots currently mapped to `pid` (summed), and those slots. */
const framesOf = (page, pid) => page.evaluate(async (pid) => {
  const sub = window.ilsPage.sub;
  if (!sub) return { frames: 0, slots: [] };
  const st = await sub.slotStats();
  const mine = st.filter((s) => s.kind === "video" && s.participant === pid);
  return { frames: mine.reduce((a, s) => a + s.framesDecoded, 0), slots: mine.map((s) => s.slot), w: Math.max(0, ...mine.map((s) => s.frameWidth)) };
}, pid);

/** The media engine's pid: the child of ils-control `controlPid` run as `… engine …` (or `ils-engine`). */
function engineChildOf(controlPid) {
  if (!controlPid) return 0;
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const args = readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0");
      if (ppid === controlPid && (args[0].endsWith("ils-engine") || args[1] === "engine")) return Number(d);
    } catch (_) { /* gone meanwhile */ }
  }
  return 0;
}

/** framesDecoded of given video slot numbers. */
const slotFrames = (page, slots) => page.evaluate(async (slots) => {
  const st = await window.ilsPage.sub.slotStats();
  return st.filter((s) => s.kind === "video" && slots.includes(s.slot)).reduce((a, s) => a + s.framesDecoded, 0);
}, slots);

/** The subscriber connection's negotiation counters and shape. */
const negotiationsOf = (page) => page.evaluate(() => {
  const c = window.ilsPage.client;
  const sub = window.ilsPage.sub;
  return {
    offers: sub.negotiations.offers, answers: sub.negotiations.answers, negotiationNeeded: sub.negotiationNeeded,
    transceivers: sub.pc.getTransceivers().length, signaling: sub.pc.signalingState, state: sub.pc.connectionState,
    answerMessages: c.received.answer || 0, mappings: sub.mappings,
  };
});

/**
 * Starts, inside the page, a watcher that records when a video slot mapped to `pid` first decodes
 * a frame it had not decoded at the start (browser and node share the machine clock).
 */
const armFirstFrame = (page, pid, timeoutMs) => page.evaluate(({ pid, timeoutMs }) => {
  const sub = window.ilsPage.sub;
  window.__firstFrame = (async () => {
    const base = new Map((await sub.slotStats()).map((s) => [`${s.kind}:${s.slot}`, s.framesDecoded]));
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      const st = await sub.slotStats();
      const hit = st.find((s) => s.kind === "video" && s.participant === pid && s.framesDecoded > (base.get(`${s.kind}:${s.slot}`) || 0));
      if (hit) return { at: Date.now(), slot: hit.slot };
      await new Promise((r) => setTimeout(r, 25));
    }
    return { at: 0, slot: -1 };
  })();
}, { pid, timeoutMs });
const firstFrame = (page) => page.evaluate(() => window.__firstFrame);

/** Polls `fn` in node until it returns truthy or `ms` pass; returns the last value. */
async function until(fn, ms, every = 200) {
  const end = Date.now() + ms;
  let v;
  for (;;) {
    v = await fn();
    if (v || Date.now() > end) return v;
    await sleep(every);
  }
}

async function screenshots(apps, suffix) {
  for (const a of apps) {
    try {
      await a.page.screenshot({ path: join(ARTIFACTS, `ils-${a.label}-${suffix}.png`), fullPage: true });
    } catch (e) {
      log(`screenshot ${a.label}: ${e.message.split("\n")[0]}`);
    }
  }
}

// ------------------------------------------------------------------------------------------
// The scenario

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  const browser = await launchChromium();
  log(`chromium ${browser.version()}`);
  const control = MOCK ? new MockIls(browser) : new Control();
  let front = null;
  try {
    await control.start();
    const served = await fetch(`${BASE}/viewer.html`).then((r) => r.status).catch(() => 0);
    if (served === 200 && !process.env.ILS_FORCE_FRONT) {
      log(`${MOCK ? "the mock server" : "ils-control"} serves the app pages itself`);
    } else {
      front = await startFront();
      WEB = `http://${WEB_HTTP}`;
      log(`ils-control answers GET /viewer.html with ${served}: serving control/web/ from disk on ${WEB}, forwarding the rest to ${BASE}`);
    }
    check("ils-control serves the app pages (GET /viewer.html, /ils-client.js)", served === 200,
      served === 200 ? "" : `status ${served}: a route per app file is missing in control/src/http.rs (the test continues through its front server)`);
    await run(browser, control);
  } catch (e) {
    check("scenario ran to completion", false, e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : String(e));
  } finally {
    await control.stop().catch(() => {});
    if (front) front.close();
    await browser.close().catch(() => {});
  }
}

async function run(browser, control) {
  // ---- 1. pages join; the host publishes into the green room --------------------------------
  const producer = await openApp(browser, "producer", "producer.html");
  need("producer console joins (/ws welcome, subscriber connection up)", producer.status === 200 && producer.ready,
    `HTTP ${producer.status}; ${producer.failed || producer.error || "ok"}`);
  const host = await openApp(browser, "host1", "studio.html");
  need("studio joins and publishes the camera (3 simulcast layers offered)", host.status === 200 && host.ready,
    `HTTP ${host.status}; ${host.failed || host.error || "ok"}`);
  const viewers = [];
  for (let i = 1; i <= 3; i++) {
    const v = await openApp(browser, `viewer${i}`, "viewer.html");
    need(`viewer${i} joins (welcome, subscriber connection with 4 video + 2 audio slots)`, v.status === 200 && v.ready,
      `HTTP ${v.status}; ${v.failed || v.error || "ok"}`);
    viewers.push(v);
  }
  const apps = [producer, host, ...viewers];
  const [v1, v2, v3] = viewers;
  const hostId = await idOf(host.page);
  const v3Id = await idOf(v3.page);
  const pubOffer = await host.page.evaluate(() => window.ilsPage.pub.offer);
  writeFileSync(join(ARTIFACTS, "ils-host-offer.sdp"), pubOffer);
  check("host's publish offer has 3 simulcast layers (rid q/h/f)", /a=simulcast:send q;h;f/.test(pubOffer));
  check("host joins into the green room", (await placeOf(host.page)) === "green_room", `place ${await placeOf(host.page)}`);
  check("viewers join into the audience", (await Promise.all(viewers.map((v) => placeOf(v.page)))).every((p) => p === "audience"));
  const count = await until(() => producer.page.evaluate(() => window.ilsPage.client.audienceCount === 3), 5_000);
  check("producer console shows the audience count (3)", count, `count ${await producer.page.evaluate(() => window.ilsPage.client.audienceCount)}`);
  const seesHost = await until(() => producer.page.evaluate((id) => window.ilsPage.client.inPlace("green_room").some((p) => String(p.id) === id), hostId), 10_000);
  need("producer console lists the host in the green room", seesHost);
  const prodHost = await until(async () => { const f = await framesOf(producer.page, hostId); return f.frames >= MIN_FRAMES ? f : null; }, FIRST_MEDIA_TIMEOUT_MS, 500);
  check("producer decodes the host while it is in the green room", !!prodHost, prodHost ? `${prodHost.frames} frames` : "no frames");
  const leak = await Promise.all(viewers.map((v) => framesOf(v.page, hostId)));
  check("viewers get no media of a green-room host", leak.every((f) => f.frames === 0 && f.slots.length === 0),
    leak.map((f, i) => `viewer${i + 1}: slots ${JSON.stringify(f.slots)} frames ${f.frames}`).join("; "));
  await host.page.click("#ready");
  const readyShown = await until(() => producer.page.evaluate((id) => {
    const li = document.querySelector(`#green li[data-participant="${id}"]`);
    return !!li && li.textContent.includes("ready to go live");
  }, hostId), 5_000, 100);
  check("host's 'ready to go live' reaches the producer console (app message to producers)", readyShown);
  await screenshots(apps, "1-green-room");

  // ---- 2. the host goes live ----------------------------------------------------------------
  await producer.page.click(`#green li[data-participant="${hostId}"] button.to-stage`);
  const live = await until(async () => (await placeOf(host.page)) === "stage", 5_000);
  check("producer's 'to stage' puts the host live (studio shows stage)", live);
  const hostFrames = await until(async () => {
    const f = await Promise.all(viewers.map((v) => framesOf(v.page, hostId)));
    return f.every((x) => x.frames >= MIN_FRAMES) ? f : null;
  }, FIRST_MEDIA_TIMEOUT_MS, 500) || (await Promise.all(viewers.map((v) => framesOf(v.page, hostId))));
  need(`3 viewers decode the live host (>= ${MIN_FRAMES} frames each)`, hostFrames.every((x) => x.frames >= MIN_FRAMES),
    hostFrames.map((f, i) => `viewer${i + 1}: ${f.frames} frames, slots ${JSON.stringify(f.slots)}, ${f.w}px`).join("; "));
  await screenshots(apps, "2-host-live");
  await producer.page.click(`#stage li[data-participant="${hostId}"] button.mute`);
  const muted = await until(() => host.page.evaluate(() => window.ilsPage.pub.stream.getAudioTracks().every((t) => !t.enabled) && window.ilsPage.client.received.muted > 0), 5_000, 100);
  const mutedListed = await until(() => producer.page.evaluate((id) => (window.ilsPage.client.participants.get(id) || { muted: {} }).muted.audio === true, hostId), 5_000, 100);
  check("producer mutes the host's mic: the studio gets `muted` and disables the mic, the console lists it muted", muted && mutedListed, `studio ${muted}, console ${mutedListed}`);
  await producer.page.click(`#stage li[data-participant="${hostId}"] button.mute`);
  const unmuted = await until(() => host.page.evaluate(() => window.ilsPage.pub.stream.getAudioTracks().every((t) => t.enabled)), 5_000, 100);
  check("producer unmutes the host again", unmuted);

  // ---- 3. raise hand → invite → green room → stage, no renegotiation ------------------------
  await v3.page.click("#hand");
  const hand = await until(() => producer.page.evaluate((id) => window.ilsPage.client.hands.has(id), v3Id), 5_000);
  need("viewer3's raised hand reaches the producer", hand);
  await producer.page.click(`#hands li[data-participant="${v3Id}"] button.invite`);
  const invited = await until(() => v3.page.evaluate(() => window.ilsPage.invited > 0 && !!window.ilsPage.preview), 10_000);
  need("viewer3 is invited and previews its camera", invited);
  await v3.page.click("#golive");
  const v3pub = await until(() => v3.page.evaluate(() => {
    const c = window.ilsPage.client;
    return c.publication && c.publication.pc.connectionState === "connected" && c.you.place === "green_room" ? c.publication.negotiations : null;
  }), 20_000);
  need("viewer3 publishes from the green room", !!v3pub, JSON.stringify(v3pub || (await v3.page.evaluate(() => ({ place: window.ilsPage.client.you.place, pc: window.ilsPage.client.publication && window.ilsPage.client.publication.pc.connectionState })))));
  await until(() => producer.page.evaluate((id) => window.ilsPage.client.inPlace("green_room").some((p) => String(p.id) === id), v3Id), 5_000);
  await sleep(1000); // let viewer3's publisher reach the engine (its layers start flowing)
  const others = [v1, v2];
  const negBefore = await Promise.all(others.map((v) => negotiationsOf(v.page)));
  for (const v of others) await armFirstFrame(v.page, v3Id, 10_000);
  const tMove = Date.now();
  await producer.page.click(`#green li[data-participant="${v3Id}"] button.to-stage`);
  const firsts = await Promise.all(others.map((v) => firstFrame(v.page)));
  const lat = firsts.map((f) => (f.at ? f.at - tMove : -1));
  writeFileSync(join(ARTIFACTS, "ils-stage-latency.json"), JSON.stringify({ firsts, lat }, null, 2));
  check(`viewers 1 and 2 decode viewer3 within ${STAGE_DECODE_MS} ms of 'to stage'`, lat.every((l) => l >= 0 && l <= STAGE_DECODE_MS),
    lat.map((l, i) => `viewer${i + 1}: ${l < 0 ? "never" : l + " ms"} (slot ${firsts[i].slot})`).join("; "));
  await sleep(1500);
  const v3Frames = await Promise.all(others.map((v) => framesOf(v.page, v3Id)));
  await sleep(1000);
  const v3Frames2 = await Promise.all(others.map((v) => framesOf(v.page, v3Id)));
  check("viewer3's video keeps playing at viewers 1 and 2 (>= 10 frames/s)", v3Frames2.every((f, i) => f.frames - v3Frames[i].frames >= 10),
    v3Frames2.map((f, i) => `viewer${i + 1}: ${v3Frames[i].frames}→${f.frames}`).join("; "));
  const negAfter = await Promise.all(others.map((v) => negotiationsOf(v.page)));
  check("no renegotiation on stage change: viewers' subscriber connections made 1 offer / 1 answer, unchanged",
    negAfter.every((n, i) => n.offers === 1 && n.answers === 1 && n.answerMessages === 1 && n.offers === negBefore[i].offers &&
      n.answers === negBefore[i].answers && n.transceivers === negBefore[i].transceivers && n.signaling === "stable" && n.mappings > negBefore[i].mappings),
    negAfter.map((n, i) => `viewer${i + 1}: before ${JSON.stringify(negBefore[i])} after ${JSON.stringify(n)}`).join("; "));
  await screenshots(apps, "3-viewer3-on-stage");

  // ---- 4. back to the green room: media stops reaching viewers ------------------------------
  const slotsOfV3 = v3Frames2.map((f) => f.slots);
  await producer.page.click(`#stage li[data-participant="${v3Id}"] button.to-green`);
  await sleep(1000);
  const offA = await Promise.all(others.map((v, i) => slotFrames(v.page, slotsOfV3[i])));
  const hostA = await Promise.all(others.map((v) => framesOf(v.page, hostId)));
  const prodA = await framesOf(producer.page, v3Id);
  await sleep(2000);
  const offB = await Promise.all(others.map((v, i) => slotFrames(v.page, slotsOfV3[i])));
  const hostB = await Promise.all(others.map((v) => framesOf(v.page, hostId)));
  const prodB = await framesOf(producer.page, v3Id);
  const mapped = await Promise.all(others.map((v) => framesOf(v.page, v3Id)));
  check("after 'back to green room' viewer3's media stops reaching viewers (slot frames frozen from +1 s to +3 s, slot unmapped)",
    offB.every((b, i) => b - offA[i] <= OFF_STAGE_MAX_FRAMES) && mapped.every((m) => m.slots.length === 0),
    offB.map((b, i) => `viewer${i + 1}: slots ${JSON.stringify(slotsOfV3[i])} ${offA[i]}→${b}, mapped now ${JSON.stringify(mapped[i].slots)}`).join("; "));
  check("the host keeps playing at viewers meanwhile", hostB.every((b, i) => b.frames - hostA[i].frames >= 20),
    hostB.map((b, i) => `viewer${i + 1}: ${hostA[i].frames}→${b.frames}`).join("; "));
  check("the producer still decodes viewer3 in the green room", prodB.frames - prodA.frames >= 20, `${prodA.frames}→${prodB.frames}`);

  // ---- 5a. chat ---------------------------------------------------------------------------
  const text = `hello from viewer1 ${Date.now() % 100000}`;
  const hasText = (page) => page.evaluate((t) => window.ilsPage.client.chatLog.some((m) => m.text === t), text);
  const tChat = Date.now();
  await v1.page.fill("#chat-input", text);
  await v1.page.press("#chat-input", "Enter");
  const got = await until(async () => (await Promise.all([v1, v2, producer].map((a) => hasText(a.page)))).every(Boolean), 5_000, 50);
  check("chat round trip: viewer1's message reaches viewers and the producer", got, `${Date.now() - tChat} ms`);
  check("hosts do not see an audience message the producer has not featured", !(await hasText(host.page)));
  await producer.page.click(`#chat li:has(span.text:text-is("${text}")) button.feature`);
  const featured = await until(() => hasText(host.page), 5_000, 100);
  check("hosts see the message once the producer features it", featured);
  await producer.page.click(`#chat li:has(span.text:text-is("${text}")) button.hide`);
  const hidden = await until(() => v2.page.evaluate((t) => ![...document.querySelectorAll("#chat li .text")].some((e) => e.textContent === t), text), 5_000, 100);
  check("a message the producer hides disappears from viewers' chat", hidden);

  // ---- 5b. poll ---------------------------------------------------------------------------
  await producer.page.fill("#poll-q", "Best codec?");
  await producer.page.fill("#poll-opts", "VP8, AV1, H.264");
  await producer.page.click("#poll-form button");
  const pollId = await until(() => v1.page.evaluate(() => { const p = [...window.ilsPage.client.polls.values()].find((p) => p.question === "Best codec?"); return p ? String(p.id) : null; }), 5_000);
  need("viewers receive the poll", !!pollId);
  const votes = [[v1, 0], [v2, 1], [v3, 0]];
  for (const [v, opt] of votes) {
    await until(() => v.page.evaluate((id) => !!document.querySelector(`.poll[data-poll="${id}"] button.vote`), pollId), 5_000);
    await v.page.click(`.poll[data-poll="${pollId}"] button.vote[data-option="${opt}"]`);
  }
  const counts = await until(async () => {
    const c = await producer.page.evaluate((id) => { const p = window.ilsPage.client.polls.get(id); return p ? p.counts : null; }, pollId);
    return c && c[0] === 2 && c[1] === 1 && c[2] === 0 ? c : null;
  }, 5_000, 100);
  check("poll results reach the producer: [2, 1, 0]", !!counts, JSON.stringify(counts || await producer.page.evaluate((id) => window.ilsPage.client.polls.get(id), pollId)));
  const viewerCounts = await until(() => v2.page.evaluate((id) => { const p = window.ilsPage.client.polls.get(id); return p && p.counts[0] === 2 && p.counts[1] === 1 ? p.counts : null; }, pollId), 5_000, 100);
  check("viewers see the live results", !!viewerCounts, JSON.stringify(viewerCounts));
  const again = await v1.page.evaluate((id) => window.ilsPage.client.vote(Number(id), 1).then(() => "accepted", (e) => e.code), pollId);
  check("a second vote by the same viewer is refused with a typed error", again === "conflict", `got ${again}`);

  // ---- 5c. reaction burst, aggregated ---------------------------------------------------------
  const before = await producer.page.evaluate(() => ({ msgs: window.ilsPage.client.received.reactions || 0, totals: { ...window.ilsPage.reactions.totals } }));
  const sent = await Promise.all(viewers.map((v) => v.page.evaluate(async (n) => {
    const c = window.ilsPage.client;
    const all = [];
    for (let i = 0; i < n; i++) all.push(c.react("👍"), c.react("🎉"));
    const r = await Promise.allSettled(all);
    return { ok: r.filter((x) => x.status === "fulfilled").length, refused: r.filter((x) => x.status === "rejected").map((x) => x.reason.code) };
  }, REACTIONS_PER_VIEWER)));
  const accepted = sent.reduce((a, s) => a + s.ok, 0);
  const windowMs = await producer.page.evaluate(() => (window.ilsPage.client.limits && window.ilsPage.client.limits.reaction_window_ms) || 500);
  await sleep(2 * windowMs + 500);
  const after = await producer.page.evaluate(() => ({ msgs: window.ilsPage.client.received.reactions || 0, totals: { ...window.ilsPage.reactions.totals } }));
  const delta = (e) => (after.totals[e] || 0) - (before.totals[e] || 0);
  const msgs = after.msgs - before.msgs;
  const refusedCodes = [...new Set(sent.flatMap((s) => s.refused))];
  check("reaction burst arrives aggregated: counts add up to the accepted reactions, in fewer messages",
    accepted > 0 && delta("👍") + delta("🎉") === accepted && msgs >= 1 && msgs < accepted,
    `sent ${3 * 2 * REACTIONS_PER_VIEWER}, accepted ${accepted} (refused: ${refusedCodes.join(",") || "none"}), counted 👍 ${delta("👍")} 🎉 ${delta("🎉")} in ${msgs} reactions messages (window ${windowMs} ms)`);
  check("refused reactions carry a typed code (rate_limited)", refusedCodes.every((c) => c === "rate_limited"), refusedCodes.join(",") || "none refused");

  // ---- 5d. layout, grid orientation -----------------------------------------------------------
  await producer.page.selectOption("#layout-mode", "spotlight");
  await producer.page.selectOption("#layout-who", hostId).catch(() => {});
  await producer.page.click("#push-layout");
  const lay = await until(() => v1.page.evaluate(() => window.ilsPage.client.layout && window.ilsPage.client.layout.mode), 5_000, 100);
  check("a pushed layout reaches viewers", lay === "spotlight", `layout ${lay}`);
  await v2.page.setViewportSize({ width: 540, height: 960 });
  await sleep(300);
  const dirs = await Promise.all([v1, v2].map((v) => v.page.evaluate(() => getComputedStyle(document.getElementById("grid")).flexDirection)));
  check("viewer grid: side by side in landscape, stacked in portrait", dirs[0] === "row" && dirs[1] === "column", `landscape ${dirs[0]}, portrait ${dirs[1]}`);
  const layerOf = (page) => page.evaluate((pid) => {
    const s = window.ilsPage.sub.slotsOf(pid).find((x) => x.kind === "video");
    return s ? { slot: s.slot, size: s.size, layer: s.layer } : null;
  }, hostId);
  const want = [["full", "f"], ["medium", "h"]];
  const layers = await until(async () => {
    const l = await Promise.all([v1, v2].map((v) => layerOf(v.page)));
    return l.every((x, i) => x && x.size === want[i][0] && x.layer === want[i][1]) ? l : null;
  }, 5_000, 200) || (await Promise.all([v1, v2].map((v) => layerOf(v.page))));
  await sleep(2000);
  const widths = await Promise.all([v1, v2].map((v) => framesOf(v.page, hostId)));
  check("slot sizes follow the tiles: spotlight tile asks 'full' (layer f), portrait tile 'medium' (layer h)",
    layers.every((x, i) => x && x.size === want[i][0] && x.layer === want[i][1]),
    layers.map((x, i) => `viewer${i + 1}: ${JSON.stringify(x)}, decoding ${widths[i].w}px wide`).join("; "));
  await screenshots(apps, "4-end");

  const finalNeg = await Promise.all(viewers.map((v) => negotiationsOf(v.page)));
  writeFileSync(join(ARTIFACTS, "ils-final.json"), JSON.stringify({ negotiations: finalNeg }, null, 2));
  check("every viewer made exactly one offer/answer on its subscriber connection over the whole session",
    finalNeg.every((n) => n.offers === 1 && n.answers === 1), finalNeg.map((n) => `${n.offers}/${n.answers}`).join(" "));

  // ---- 5e. a viewer's signaling socket drops (RELIABILITY F7) -------------------------------
  // Closing with a code other than 1000/1001 is a drop to the server (the participant is held
  // for the resume grace) and to ils-client.js (it reconnects with hello{resume:true}): the
  // viewer is the same participant, its subscriber connection untouched, the host keeps playing.
  if (!MOCK) {
    const before = await v1.page.evaluate(() => ({ id: window.ilsPage.client.you.id, sub: window.ilsPage.sub.negotiations.offers }));
    const f0 = await framesOf(v1.page, hostId);
    const tDrop = Date.now();
    await v1.page.evaluate(() => { window.__subBefore = window.ilsPage.sub; window.ilsPage.client.ws.close(4000, "test: network drop"); });
    const resumed = await until(() => v1.page.evaluate(() => {
      const c = window.ilsPage.client;
      return c.reconnects === 1 && !c.reconnecting ? { id: c.you.id, sameSub: window.ilsPage.sub === window.__subBefore, renegotiations: c.renegotiations, resumedWelcome: c.received.welcome } : null;
    }), 10_000, 100);
    const f1 = await until(async () => { const f = await framesOf(v1.page, hostId); return f.frames - f0.frames >= 30 ? f : null; }, 5_000, 200);
    check("a dropped signaling socket resumes: same participant, subscriber connection untouched (no renegotiation), the host keeps playing",
      !!resumed && String(resumed.id) === String(before.id) && resumed.sameSub && resumed.renegotiations === 0 && !!f1,
      `${Date.now() - tDrop} ms; ${JSON.stringify(resumed)}; frames ${f0.frames}→${f1 ? f1.frames : "stalled"}`);
  }

  // ---- 5f. the media engine crashes: server-initiated renegotiation ---------------------------
  // SIGKILL the engine (control restarts it; every connection it carried is gone). Control sends
  // `renegotiate` to each connection's owner and ils-client.js makes it again by itself: the host
  // keeps its stage place and every viewer decodes it again through a new subscriber connection.
  if (!MOCK) {
    const enginePid = engineChildOf(control.child && control.child.pid);
    need("found the media engine process (a child of ils-control)", !!enginePid);
    const tKill = Date.now();
    log(`SIGKILL media engine pid ${enginePid}`);
    process.kill(enginePid, "SIGKILL");
    const back = await until(async () => {
      const r = await Promise.all(viewers.map((v) => v.page.evaluate(() => window.ilsPage.client.renegotiations)));
      const f = await Promise.all(viewers.map((v) => framesOf(v.page, hostId)));
      return r.every((n) => n >= 1) && f.every((x) => x.frames >= 20) ? { r, f } : null;
    }, ENGINE_RESTART_RECOVERY_MS, 250);
    const hostRen = await host.page.evaluate(() => ({ n: window.ilsPage.client.renegotiations, pc: window.ilsPage.pub && window.ilsPage.pub.pc.connectionState }));
    const fNow = await Promise.all(viewers.map((v) => framesOf(v.page, hostId)));
    check(`after a media engine crash every viewer renegotiates by itself and decodes the host again within ${ENGINE_RESTART_RECOVERY_MS / 1000} s`,
      !!back, `${Date.now() - tKill} ms; ` + viewers.map((v, i) => `viewer${i + 1}: ${fNow[i].frames} frames`).join("; ") + `; host renegotiations ${hostRen.n}, publisher ${hostRen.pc}`);
    const stillLive = await producer.page.evaluate((id) => { const p = window.ilsPage.client.participants.get(id); return p ? p.place : null; }, hostId);
    check("the host kept its stage place through the restart and publishes again", stillLive === "stage" && hostRen.n >= 1 && hostRen.pc === "connected", `place ${stillLive}, host ${JSON.stringify(hostRen)}`);
  }

  // ---- 6. the producer ends the session ---------------------------------------------------------
  producer.page.once("dialog", (d) => d.accept());
  await producer.page.click("#end");
  const ended = await until(async () => (await Promise.all(apps.map((a) => a.page.evaluate(() => window.ilsPage.client.received.ended || 0)))).every((n) => n > 0), 5_000, 100);
  const endedText = await v1.page.textContent("#error");
  check("'End session' ends it for every page (`ended`, shown on the page)", ended && /ended/.test(endedText || ""), JSON.stringify(endedText));
  await screenshots([v1], "5-ended");
}

await runTest({ title: TITLE, deadlineS: DEADLINE_S, summaryPath: join(ARTIFACTS, "ils-summary.txt"), main });
