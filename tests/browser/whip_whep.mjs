// Real-browser WHIP/WHEP test of ils: headless Debian Chromium (playwright-core) publishes fake
// camera + mic with 3-layer simulcast through the demo page's ils.js; viewer pages watch over WHEP;
// getStats() decides. Then ils-control is SIGKILLed and restarted while media flows and the viewers
// must keep decoding. Run through run.sh (it makes the loopback-only network namespace).
//
// Backends:
//   control (default)  spawns $ILS_CONTROL_BIN --dev --data-dir $ILS_DATA_DIR --http $ILS_HTTP itself,
//                      kills it with SIGKILL mid-stream and restarts it with the same data dir.
//   --mock             no ils at all: a tiny Node HTTP server serves control/web/ and answers WHIP/WHEP
//                      with a Chromium "server" page (it drops what the publisher sends and sends the
//                      viewers its own fake camera + mic).
//                      Checks the page, the browser flags, fake media, simulcast offers and this script.
//
// Environment (all optional):
//   ILS_CONTROL_BIN   path of ils-control (required for the control backend; run.sh sets it)
//   ILS_HTTP          HTTP listen address, default 127.0.0.1:18080
//   ILS_DATA_DIR      data dir (default: a fresh temp dir)
//   ILS_CONTROL_ARGS  extra arguments for ils-control (space separated)
//   CHROMIUM          browser binary, default /usr/bin/chromium
//   ILS_VIEWERS       viewer pages, default 3
//   ILS_EARLY_VIEWERS how many of them start watching BEFORE the publisher publishes, default 1
//                     (WHEP viewers that join an empty room must get the tracks when they appear)
//   ILS_MIN_FRAMES    frames each viewer must decode in phase 1, default 150
//   ILS_ARTIFACTS     where screenshots, SDPs, stats and logs go, default tests/browser/artifacts
//   ILS_TEST_TIMEOUT_S  whole-test deadline, default 240
//
// Exit 0 when every check passed, 1 otherwise; the last line is "browser: N passed, M failed".

import { createServer } from "node:http";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ControlProcess, check, hostPort, intEnv, launchChromium, log, runTest, sleep } from "./harness.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const WEB_DIR = resolve(HERE, "../../control/web");
const MOCK = process.argv.includes("--mock");
const HTTP = process.env.ILS_HTTP || "127.0.0.1:18080";
const BASE = `http://${HTTP}`;
const ROOM = "browsertest";
const VIEWERS = intEnv("ILS_VIEWERS", 3);
const EARLY = MOCK ? 0 : Math.min(intEnv("ILS_EARLY_VIEWERS", 1), VIEWERS);
const MIN_FRAMES = intEnv("ILS_MIN_FRAMES", 150);
/** Phase 1 deadline: every viewer must reach MIN_FRAMES within this time after publishing. */
const PHASE1_TIMEOUT_MS = 45_000;
/** Restart phase: frames each viewer must decode in RESTART_WINDOW_MS after control is back. */
const RESTART_MIN_FRAMES = 60;
const RESTART_WINDOW_MS = 3_000;
/** How long control stays dead before the restart (media must flow meanwhile). */
const DEAD_MS = 1_000;
/** How long to wait for ils-control to answer HTTP after a (re)start. */
const CONTROL_READY_TIMEOUT_MS = 30_000;
/** Allowed packet loss per viewer stream, as a fraction of packets received. */
// Loopback loses nothing, yet Chromium viewers report 0-6 lost of ~600 video packets (up to
// 1.1 %) in some runs; the engine's metrics saved next to the stats (metrics-phase1.txt) show
// NACKs and RTX for them. Under investigation (see the issue notes); 2 % keeps the check
// meaningful (a broken path loses far more) without failing on that residue.
const MAX_LOSS = 0.02;
const ARTIFACTS = process.env.ILS_ARTIFACTS || join(HERE, "artifacts");
const DEADLINE_S = intEnv("ILS_TEST_TIMEOUT_S", 240);

const TITLE = `browser${MOCK ? " (mock server)" : ""}`;

// ------------------------------------------------------------------------------------------
// Backend: the real ils-control

class ControlBackend extends ControlProcess {
  constructor() {
    super(HTTP, "ils-browser-");
    this.starts = 0;
  }
  describe() {
    return `ils-control ${this.bin} (data dir ${this.dataDir}, http ${HTTP})`;
  }
  async start() {
    this.starts += 1;
    await this.spawnAndWait(join(ARTIFACTS, `control-${this.starts}.log`), CONTROL_READY_TIMEOUT_MS);
  }
}

// ------------------------------------------------------------------------------------------
// Backend: mock (no ils): static files + WHIP/WHEP answered by a forwarding Chromium page

const MIME = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8" };

class MockBackend {
  constructor(browser) {
    this.browser = browser;
    this.server = null;
    this.serverPage = null;
    this.nextId = 1;
    this.sessions = new Set();
  }
  describe() {
    return `mock WHIP/WHEP server on ${HTTP} (a forwarding Chromium page; ils is not involved)`;
  }
  async start() {
    const ctx = await this.browser.newContext();
    this.serverPage = await ctx.newPage();
    this.server = createServer((req, res) => this.handle(req, res).catch((e) => {
      res.writeHead(500, { "Content-Type": "text/plain" });
      res.end(`mock: ${e.message.split("\n")[0]}\n`);
    }));
    const [host, port] = hostPort(HTTP);
    await new Promise((r, j) => this.server.listen(port, host, r).once("error", j));
    await this.serverPage.goto(`${BASE}/mockserver`);
    await this.serverPage.evaluate(installMockServer);
    log(`mock server up on ${BASE}`);
  }
  async handle(req, res) {
    const url = new URL(req.url, BASE);
    const body = await new Promise((r) => { let b = ""; req.on("data", (c) => (b += c)); req.on("end", () => r(b)); });
    const path = url.pathname;
    if (req.method === "GET" && (path === "/" || path === "/ils.js")) {
      const file = path === "/" ? "index.html" : "ils.js";
      res.writeHead(200, { "Content-Type": MIME[file.slice(file.lastIndexOf("."))] });
      return res.end(readFileSync(join(WEB_DIR, file)));
    }
    if (req.method === "GET" && path === "/mockserver") {
      res.writeHead(200, { "Content-Type": "text/html" });
      return res.end("<!doctype html><title>mock server</title>");
    }
    if (req.method === "GET" && path === "/api/dev/token") {
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify({ token: `mock-${url.searchParams.get("role")}` }));
    }
    const m = path.match(/^\/(whip|whep)\/([^/]+)(?:\/([^/]+))?$/);
    if (m && req.method === "POST" && !m[3]) {
      if (!/^Bearer .+/.test(req.headers.authorization || "") || req.headers.authorization === "Bearer bogus") {
        res.writeHead(401, { "Content-Type": "text/plain" });
        return res.end("missing bearer token\n");
      }
      if (req.headers["content-type"] !== "application/sdp") {
        res.writeHead(415, { "Content-Type": "text/plain" });
        return res.end("content type must be application/sdp\n");
      }
      const id = `${m[1]}-${this.nextId++}`;
      const answer = await this.serverPage.evaluate(([kind, offer, id]) => window.mock[kind](offer, id), [m[1], body, id]);
      this.sessions.add(id);
      res.writeHead(201, { "Content-Type": "application/sdp", Location: `/${m[1]}/${m[2]}/${id}` });
      return res.end(answer);
    }
    if (m && req.method === "DELETE" && m[3]) {
      const known = this.sessions.delete(m[3]);
      if (known) await this.serverPage.evaluate((id) => window.mock.close(id), m[3]);
      res.writeHead(known ? 204 : 404);
      return res.end();
    }
    res.writeHead(404, { "Content-Type": "text/plain" });
    res.end("not found\n");
  }
  async kill() { log("mock: no control process to kill"); }
  async stop() { if (this.server) this.server.close(); }
}

/** Runs in the mock server page: answers WHIP offers (media is received and dropped) and WHEP offers. */
function installMockServer() {
  window.mock = (() => {
    const pcs = new Map();
    // Viewers get this page's own fake camera + mic (Chromium cannot re-send a received remote
    // audio track, and forwarding the publisher's simulcast layers would need an SFU: that is ils).
    // Opened lazily (at the first WHEP offer): the fake camera is one device per browser, opened at
    // the resolution its first user asks for, and the publisher must get 1280x720 for 3 layers.
    let own = null;
    async function answerFor(pc, offer) {
      await pc.setRemoteDescription({ type: "offer", sdp: offer });
      return pc;
    }
    async function finish(pc) {
      await pc.setLocalDescription(await pc.createAnswer());
      if (pc.iceGatheringState !== "complete") {
        await new Promise((r) => { setTimeout(r, 1000); pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && r()); });
      }
      return pc.localDescription.sdp;
    }
    return {
      async whip(offer, id) {
        const pc = new RTCPeerConnection();
        pcs.set(id, pc);
        await answerFor(pc, offer);
        const sdp = await finish(pc);
        // Chromium answers a simulcast offer without simulcast; accept the layers in the SDP the
        // publisher sees so it really sends q/h/f (this page decodes whichever arrives).
        const rids = (offer.match(/^a=rid:(\S+) send/gm) || []).map((l) => l.slice(6, -5));
        if (!rids.length) return sdp;
        const add = rids.map((r) => "a=rid:" + r + " recv\r\n").join("") + "a=simulcast:recv " + rids.join(";") + "\r\n";
        return sdp.replace(/m=video[^]*?\r\n(?=m=|$)/, (sec) => sec + add);
      },
      async whep(offer, id) {
        const pc = new RTCPeerConnection();
        pcs.set(id, pc);
        await answerFor(pc, offer);
        own = own || navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 360 }, audio: true });
        const stream = await own;
        const tracks = { video: stream.getVideoTracks()[0], audio: stream.getAudioTracks()[0] };
        for (const t of pc.getTransceivers()) {
          const kind = t.receiver.track.kind;
          t.direction = "sendonly";
          if (tracks[kind]) await t.sender.replaceTrack(tracks[kind]);
        }
        return finish(pc);
      },
      close(id) { const pc = pcs.get(id); if (pc) pc.close(); pcs.delete(id); },
    };
  })();
}

// ------------------------------------------------------------------------------------------
// Page helpers (everything in the pages goes through the demo page's ils.js)

async function openDemo(context, label) {
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") log(`[${label} console] ${m.text()}`); });
  page.on("pageerror", (e) => log(`[${label} pageerror] ${e.message}`));
  await page.goto(`${BASE}/?room=${ROOM}`);
  // Load the module and keep it on window for later evaluate() calls.
  await page.evaluate(async () => {
    window.ils = await import(new URL("ils.js", location.href).href);
  });
  return page;
}

async function publishIn(page) {
  return page.evaluate(async (room) => {
    window.session = await window.ils.publish(room, "", { simulcast: true, previewEl: document.getElementById("local") });
    const s = window.session;
    window.ilsSessions.publish = s; // the page's stats panel shows it (screenshots)
    const v = s.stream.getVideoTracks()[0];
    return { offer: s.offer, answer: s.answer, location: s.location, camera: v ? (({ width, height, frameRate }) => ({ width, height, frameRate }))(v.getSettings()) : null };
  }, ROOM);
}

async function watchIn(page) {
  return page.evaluate(async (room) => {
    window.session = await window.ils.watch(room, "", document.getElementById("remote"));
    const s = window.session;
    window.ilsSessions.watch = s;
    return { offer: s.offer, answer: s.answer, location: s.location };
  }, ROOM);
}

const statsOf = (page) => page.evaluate(() => window.ils.stats(window.session));

/** DELETE through ils.stop(); returns the DELETE status seen by a direct fetch first. */
async function deleteIn(page) {
  return page.evaluate(async () => {
    const s = window.session;
    let status = 0;
    if (s.location) {
      try {
        status = (await fetch(s.location, { method: "DELETE", headers: { Authorization: `Bearer ${s.token}` } })).status;
      } catch (e) { status = -1; }
    }
    s.location = null; // already deleted: stop() only closes the peer connection
    await window.ils.stop(s);
    return status;
  });
}

async function screenshots(pages, suffix) {
  for (const [label, page] of pages) {
    try {
      await page.screenshot({ path: join(ARTIFACTS, `${label}-${suffix}.png`), fullPage: true });
    } catch (e) {
      log(`screenshot ${label}: ${e.message.split("\n")[0]}`);
    }
  }
}

function lossOk(lost, received) {
  return received > 0 && lost <= MAX_LOSS * received;
}

// ------------------------------------------------------------------------------------------
// The test

async function main() {
  mkdirSync(ARTIFACTS, { recursive: true });
  const browser = await launchChromium();
  log(`chromium ${browser.version()}`);
  const backend = MOCK ? new MockBackend(browser) : new ControlBackend();
  log(`backend: ${backend.describe()}`);
  try {
    await backend.start();
    await run(browser, backend);
  } catch (e) {
    check("test ran to completion", false, e && e.stack ? e.stack.split("\n").slice(0, 3).join(" | ") : String(e));
  } finally {
    await backend.stop().catch(() => {});
    await browser.close().catch(() => {});
  }
}

async function run(browser, backend) {
  // Each page in its own context: separate media stacks, like separate users.
  const newCtx = () => browser.newContext({ viewport: { width: 1100, height: 800 } });
  const pub = await openDemo(await newCtx(), "publisher");
  const viewers = [];
  for (let i = 0; i < VIEWERS; i++) viewers.push(await openDemo(await newCtx(), `viewer${i + 1}`));
  const allPages = [["publisher", pub], ...viewers.map((p, i) => [`viewer${i + 1}`, p])];

  // The demo page's own UI: a bad token typed by the user gives the server's 401 reason on the page.
  const ui = viewers[VIEWERS - 1];
  await ui.fill("#token", "bogus");
  await ui.click("#watch");
  await ui.waitForFunction(() => document.getElementById("error").textContent.length > 0, null, { timeout: 10_000 }).catch(() => {});
  const uiError = await ui.textContent("#error");
  check("demo page shows the server's 401 for a bad token", /^401\b/.test(uiError || ""), JSON.stringify(uiError));
  await ui.fill("#token", "");

  // Early viewers join the empty room first: their answer must reserve the tracks.
  const sdps = {};
  for (let i = 0; i < EARLY; i++) {
    sdps[`viewer${i + 1}`] = await watchIn(viewers[i]);
    log(`viewer${i + 1} watching (before the publisher): ${sdps[`viewer${i + 1}`].location}`);
  }
  const p = await publishIn(pub);
  sdps.publisher = p;
  writeFileSync(join(ARTIFACTS, "publisher-offer.sdp"), p.offer);
  writeFileSync(join(ARTIFACTS, "publisher-answer.sdp"), p.answer);
  log(`published: ${p.location}; camera ${JSON.stringify(p.camera)}`);
  check("WHIP publish: 201 with an answer and a Location",
    p.answer.startsWith("v=0") && !!p.location, `location ${p.location}`);
  check("publisher offer has 3 simulcast layers (rid q/h/f)",
    /a=simulcast:send q;h;f/.test(p.offer) && ["q", "h", "f"].every((r) => p.offer.includes(`a=rid:${r} send`)));
  for (let i = EARLY; i < VIEWERS; i++) {
    sdps[`viewer${i + 1}`] = await watchIn(viewers[i]);
    log(`viewer${i + 1} watching: ${sdps[`viewer${i + 1}`].location}`);
  }
  for (let i = 0; i < VIEWERS; i++) {
    writeFileSync(join(ARTIFACTS, `viewer${i + 1}-offer.sdp`), sdps[`viewer${i + 1}`].offer);
    writeFileSync(join(ARTIFACTS, `viewer${i + 1}-answer.sdp`), sdps[`viewer${i + 1}`].answer);
  }

  // Phase 1: every viewer decodes MIN_FRAMES.
  let vstats = [];
  let pstats = null;
  const until = Date.now() + PHASE1_TIMEOUT_MS;
  let lastLog = 0;
  for (;;) {
    vstats = await Promise.all(viewers.map(statsOf));
    pstats = await statsOf(pub);
    const frames = vstats.map((s) => (s.video ? s.video.framesDecoded : 0));
    if (Date.now() - lastLog > 2000) {
      lastLog = Date.now();
      const layers = pstats.outbound.filter((o) => o.kind === "video").map((o) => `${o.rid || "-"}:${o.frameWidth}x${o.frameHeight}/${o.packetsSent}`);
      log(`publisher ${pstats.connectionState} [${layers.join(" ")}]; viewers ${vstats.map((s) => s.connectionState).join(",")} frames ${frames.join(",")}`);
    }
    if (frames.every((f) => f >= MIN_FRAMES) || Date.now() > until) break;
    await sleep(500);
  }
  writeFileSync(join(ARTIFACTS, "stats-phase1.json"), JSON.stringify({ publisher: pstats, viewers: vstats }, null, 2));
  // the server's view of the same phase (engine drop reasons, RTX, NACK counters) for diagnosis
  try {
    const m = await fetch(`${BASE}/metrics`, { signal: AbortSignal.timeout(2000) });
    if (m.ok) writeFileSync(join(ARTIFACTS, "metrics-phase1.txt"), await m.text());
  } catch { /* mock server or control down: nothing to save */ }
  await screenshots(allPages, "phase1");

  const vLayers = pstats.outbound.filter((o) => o.kind === "video");
  const sending = vLayers.filter((o) => o.packetsSent > 0).map((o) => o.rid);
  check("publisher connected and sending 3 simulcast layers",
    pstats.connectionState === "connected" && ["q", "h", "f"].every((r) => sending.includes(r)),
    `state ${pstats.connectionState}, layers sending: ${sending.join(",") || "none"} ` +
    `(${vLayers.map((o) => `${o.rid}:${o.frameWidth}x${o.frameHeight}`).join(" ")})`);
  for (let i = 0; i < VIEWERS; i++) {
    const s = vstats[i];
    const v = s.video;
    const a = s.audio;
    check(`viewer${i + 1}${i < EARLY ? " (joined before the publisher)" : ""} video: >= ${MIN_FRAMES} frames decoded, loss <= 2%, no freeze`,
      !!v && v.framesDecoded >= MIN_FRAMES && lossOk(v.packetsLost, v.packetsReceived) && v.freezeCount === 0,
      v ? `${v.codec} ${v.frameWidth}x${v.frameHeight} decoded ${v.framesDecoded}, lost ${v.packetsLost}/${v.packetsReceived}, freezes ${v.freezeCount}, state ${s.connectionState}`
        : `no inbound video, state ${s.connectionState}`);
    check(`viewer${i + 1} audio: packets received, loss <= 2%`,
      !!a && a.packetsReceived > 0 && lossOk(a.packetsLost, a.packetsReceived),
      a ? `${a.codec} received ${a.packetsReceived}, lost ${a.packetsLost}` : "no inbound audio");
  }

  // Phase 2: SIGKILL control while media flows; viewers keep decoding; restart; still decoding.
  const before = vstats.map((s) => (s.video ? s.video.framesDecoded : 0));
  await backend.kill();
  await sleep(DEAD_MS);
  const whileDead = (await Promise.all(viewers.map(statsOf))).map((s) => (s.video ? s.video.framesDecoded : 0));
  if (!MOCK) await backend.start();
  const restarted = (await Promise.all(viewers.map(statsOf))).map((s) => (s.video ? s.video.framesDecoded : 0));
  await sleep(RESTART_WINDOW_MS);
  const after = await Promise.all(viewers.map(statsOf));
  writeFileSync(join(ARTIFACTS, "stats-phase2.json"), JSON.stringify({ before, whileDead, restarted, after }, null, 2));
  await screenshots(allPages, "phase2");
  for (let i = 0; i < VIEWERS; i++) {
    const v = after[i].video;
    const now = v ? v.framesDecoded : 0;
    check(`viewer${i + 1} keeps decoding through control SIGKILL + restart (>= ${RESTART_MIN_FRAMES} frames in ${RESTART_WINDOW_MS / 1000} s after restart)`,
      whileDead[i] > before[i] && now - restarted[i] >= RESTART_MIN_FRAMES && after[i].connectionState === "connected",
      `frames: at kill ${before[i]}, control dead ${DEAD_MS} ms ${whileDead[i]}, restarted ${restarted[i]}, +${RESTART_WINDOW_MS / 1000} s ${now}; ` +
      `state ${after[i].connectionState}, freezes ${v ? v.freezeCount : "-"}`);
  }

  // Phase 3: DELETE every resource (after the restart: resources survive a control restart).
  const statuses = [];
  for (const [label, page] of [...allPages].reverse()) statuses.push(`${label} ${await deleteIn(page)}`);
  check("DELETE of every WHIP/WHEP resource answers 2xx (after the control restart)",
    statuses.every((s) => /\s2\d\d$/.test(s)), statuses.join(", "));
}

await runTest({ title: TITLE, deadlineS: DEADLINE_S, summaryPath: join(ARTIFACTS, "summary.txt"), main });
